package main

// Disks with real files. The simulator creates empty "<disk>.vmdk" and
// "<disk>-flat.vmdk" files (or none); the VDDK stand-in needs a monolithicFlat
// descriptor and a flat extent of the disk's capacity. This file gives every
// virtual disk the simulator knows both, growing the extent when the capacity
// grows and never shrinking or overwriting data.

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const sectorSize = 512

// diskFile is one virtual disk as the inventory describes it.
type diskFile struct {
	datastorePath string // "[LocalDS_0] vm/vm.vmdk"
	capacity      int64  // bytes
	adapter       string // ddb.adapterType
}

func allDatastores() []*simulator.Datastore {
	var out []*simulator.Datastore
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok {
			out = append(out, ds)
		}
	}
	return out
}

func dsFolder(ds *simulator.Datastore) string {
	return ds.Info.GetDatastoreInfo().Url
}

// localPath maps "[datastore] folder/disk.vmdk" to "<datastore folder>/folder/disk.vmdk",
// the same mapping the VDDK stand-in uses.
func localPath(datastorePath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(datastorePath) {
		return "", fmt.Errorf("not a datastore path: %q", datastorePath)
	}
	for _, ds := range allDatastores() {
		if ds.Name == p.Datastore {
			return filepath.Join(dsFolder(ds), filepath.FromSlash(p.Path)), nil
		}
	}
	return "", fmt.Errorf("no datastore %q", p.Datastore)
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

// fileBacking returns the disk's backing file name, or "" for disks without one.
func fileBacking(d *types.VirtualDisk) string {
	b, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return ""
	}
	name := b.GetVirtualDeviceFileBackingInfo().FileName
	if !strings.HasSuffix(name, ".vmdk") {
		return ""
	}
	return name
}

// vmDisks lists the file-backed disks of one device list.
func vmDisks(devices []types.BaseVirtualDevice) []diskFile {
	controllers := map[int32]types.BaseVirtualDevice{}
	for _, dev := range devices {
		controllers[dev.GetVirtualDevice().Key] = dev
	}
	var out []diskFile
	for _, dev := range devices {
		d, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		name := fileBacking(d)
		if name == "" {
			continue
		}
		adapter := "lsilogic"
		switch controllers[d.ControllerKey].(type) {
		case *types.VirtualIDEController:
			adapter = "ide"
		case *types.VirtualBusLogicController:
			adapter = "buslogic"
		}
		out = append(out, diskFile{datastorePath: name, capacity: diskCapacity(d), adapter: adapter})
	}
	return out
}

// knownDisks collects every file-backed disk of every VM in the inventory.
func knownDisks() []diskFile {
	var out []diskFile
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			if vm.Config != nil {
				out = append(out, vmDisks(vm.Config.Hardware.Device)...)
			}
		})
	}
	return out
}

// ensureAllDisks gives every known disk a descriptor and a flat extent.
func ensureAllDisks() {
	for _, d := range knownDisks() {
		p, err := localPath(d.datastorePath)
		if err != nil {
			log.Printf("disk %s: %v", d.datastorePath, err)
			continue
		}
		if err := ensureDisk(p, d.capacity, d.adapter); err != nil {
			log.Printf("disk %s: %v", d.datastorePath, err)
		}
	}
}

// flatName is the extent's file name for a descriptor path: vm.vmdk -> vm-flat.vmdk.
func flatName(descPath string) string {
	return strings.TrimSuffix(filepath.Base(descPath), ".vmdk") + "-flat.vmdk"
}

const descriptorMagic = "# Disk DescriptorFile"

var extentLine = regexp.MustCompile(`^RW (\d+) FLAT "([^"]+)" 0$`)

// descriptor holds the fields of a monolithicFlat descriptor that we write
// or change; other lines of an existing descriptor are kept as they are.
type descriptor struct {
	lines   []string
	extent  int // index of the extent line, -1 if none
	sectors int64
	flat    string
	uuid    string
}

func parseDescriptor(text string) (*descriptor, bool) {
	if !strings.HasPrefix(text, descriptorMagic) {
		return nil, false
	}
	d := &descriptor{lines: strings.Split(strings.TrimRight(text, "\n"), "\n"), extent: -1}
	flat := false
	for i, line := range d.lines {
		line = strings.TrimSpace(line)
		if m := extentLine.FindStringSubmatch(line); m != nil {
			if d.extent >= 0 {
				return nil, false // several extents: not a disk we manage
			}
			d.extent = i
			d.sectors, _ = strconv.ParseInt(m[1], 10, 64)
			d.flat = m[2]
		}
		if line == `createType="monolithicFlat"` {
			flat = true
		}
		if strings.HasPrefix(line, "ddb.uuid") {
			if v := strings.SplitN(line, "=", 2); len(v) == 2 {
				d.uuid = strings.Trim(strings.TrimSpace(v[1]), `"`)
			}
		}
	}
	return d, flat && d.extent >= 0
}

func (d *descriptor) set(prefix, line string) {
	for i, l := range d.lines {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			d.lines[i] = line
			return
		}
	}
	d.lines = append(d.lines, line)
}

func (d *descriptor) text() string {
	return strings.Join(d.lines, "\n") + "\n"
}

// geometry follows VMware's convention: IDE disks use 16 heads, SCSI 255; 63 sectors per track.
func geometry(sectors int64, adapter string) (cyl, heads, spt int64) {
	heads, spt = 255, 63
	if adapter == "ide" {
		heads = 16
	}
	cyl = sectors / (heads * spt)
	if cyl > 65535 {
		cyl = 65535
	}
	if cyl < 1 {
		cyl = 1
	}
	return cyl, heads, spt
}

// newDiskUUID returns a random ddb.uuid in VMware's notation.
func newDiskUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return formatUUID(b[:])
}

func formatUUID(b []byte) string {
	parts := make([]string, 16)
	for i := range parts {
		parts[i] = fmt.Sprintf("%02x", b[i])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func newCID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
}

func freshDescriptor(flat string, sectors int64, adapter string) *descriptor {
	cyl, heads, spt := geometry(sectors, adapter)
	uuid := newDiskUUID()
	lines := []string{
		descriptorMagic,
		"version=1",
		`encoding="UTF-8"`,
		"CID=" + newCID(),
		"parentCID=ffffffff",
		`createType="monolithicFlat"`,
		"",
		"# Extent description",
		fmt.Sprintf(`RW %d FLAT "%s" 0`, sectors, flat),
		"",
		"# The Disk Data Base",
		"#DDB",
		"",
		fmt.Sprintf(`ddb.adapterType = "%s"`, adapter),
		fmt.Sprintf(`ddb.geometry.cylinders = "%d"`, cyl),
		fmt.Sprintf(`ddb.geometry.heads = "%d"`, heads),
		fmt.Sprintf(`ddb.geometry.sectors = "%d"`, spt),
		fmt.Sprintf(`ddb.uuid = "%s"`, uuid),
		`ddb.virtualHWVersion = "14"`,
	}
	return &descriptor{lines: lines, extent: 8, sectors: sectors, flat: flat, uuid: uuid}
}

// ensureDisk makes descPath a monolithicFlat descriptor of at least capacity
// bytes whose extent, beside it, is at least that long. A descriptor copied
// from another disk (CopyVirtualDisk) gets its own extent name and uuid.
// Files that are neither empty nor a descriptor are left alone.
func ensureDisk(descPath string, capacity int64, adapter string) error {
	sectors := (capacity + sectorSize - 1) / sectorSize
	flat := flatName(descPath)

	raw, err := os.ReadFile(descPath)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var d *descriptor
	dirty := false
	switch {
	case len(strings.TrimSpace(string(raw))) == 0:
		d, dirty = freshDescriptor(flat, sectors, adapter), true
	default:
		var ok bool
		d, ok = parseDescriptor(string(raw))
		if !ok {
			log.Printf("%s: not a monolithicFlat descriptor; left alone", descPath)
			return nil
		}
		if d.flat != flat {
			// A copy: it names the source's extent and carries its identity.
			d.flat, d.uuid = flat, newDiskUUID()
			d.set("ddb.uuid", fmt.Sprintf(`ddb.uuid = "%s"`, d.uuid))
			d.set("CID=", "CID="+newCID())
			dirty = true
		}
		if d.sectors < sectors {
			d.sectors = sectors
			cyl, _, _ := geometry(sectors, adapter)
			d.set("ddb.geometry.cylinders", fmt.Sprintf(`ddb.geometry.cylinders = "%d"`, cyl))
			dirty = true
		}
		if dirty {
			d.lines[d.extent] = fmt.Sprintf(`RW %d FLAT "%s" 0`, d.sectors, d.flat)
		}
	}

	if err := os.MkdirAll(filepath.Dir(descPath), 0o755); err != nil {
		return err
	}
	// The extent first: a descriptor never points at a missing or short extent.
	if err := growFile(filepath.Join(filepath.Dir(descPath), flat), d.sectors*sectorSize); err != nil {
		return err
	}
	if dirty {
		return writeAtomic(descPath, []byte(d.text()))
	}
	return nil
}

// growFile extends path (creating it) to size bytes without writing data:
// the new part is a hole. It never shrinks a file.
func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < size {
		return f.Truncate(size)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".repofs-tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// diskIdentity reads ddb.uuid from a descriptor; a descriptor without one is
// identified by its path.
func diskIdentity(descPath string) (string, error) {
	f, err := os.Open(descPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if strings.HasPrefix(line, "ddb.uuid") {
			if v := strings.SplitN(line, "=", 2); len(v) == 2 {
				return strings.Trim(strings.TrimSpace(v[1]), `"`), nil
			}
		}
	}
	sum := sha1.Sum([]byte(descPath))
	return formatUUID(sum[:16]), scanner.Err()
}
