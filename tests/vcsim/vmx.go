package main

// VM files with content. The simulator writes every VM's .vmx and .nvram
// empty; a backup downloads both over /folder. We render the .vmx from the
// VM's configuration (keys as ESXi writes them, for what the configuration
// holds) and give the .nvram some deterministic bytes. A .vmx that someone
// else wrote (an upload before RegisterVM_Task, say) is left alone: we only
// write an empty file or one that carries our marker.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"log"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const vmxMarker = "# written by repofs' test vCenter from the VM's configuration"

const nvramSize = 8684 // what ESXi's BIOS nvram files weigh

// vmFiles is what ensureVMFiles writes for one VM.
type vmFiles struct {
	vmx, nvram string // local paths
	text       string // .vmx content
	uuid       string
}

// ensureVMFiles renders every VM's .vmx and fills empty .nvram files.
func ensureVMFiles() {
	var all []vmFiles
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			if vm.Config == nil || vm.Config.Files.VmPathName == "" {
				return
			}
			vmxPath, err := localPath(vm.Config.Files.VmPathName)
			if err != nil || filepath.Ext(vmxPath) != ".vmx" {
				return
			}
			all = append(all, vmFiles{
				vmx:   vmxPath,
				nvram: strings.TrimSuffix(vmxPath, ".vmx") + ".nvram",
				text:  renderVMX(vm),
				uuid:  vm.Config.Uuid,
			})
		})
	}
	for _, f := range all {
		if err := writeVMX(f.vmx, f.text); err != nil {
			log.Printf("%s: %v", f.vmx, err)
		}
		if err := fillNVRAM(f.nvram, f.uuid); err != nil {
			log.Printf("%s: %v", f.nvram, err)
		}
	}
}

func writeVMX(p, text string) error {
	old, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil // the VM's files are gone (or never were): not ours to create
	}
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(old)) != 0 && !bytes.HasPrefix(old, []byte(vmxMarker)) {
		return nil
	}
	if string(old) == text {
		return nil
	}
	return writeAtomic(p, []byte(text))
}

func fillNVRAM(p, seed string) error {
	st, err := os.Stat(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil || st.Size() != 0 {
		return err
	}
	var data []byte
	block := sha256.Sum256([]byte("repofs vcsim nvram " + seed))
	for len(data) < nvramSize {
		data = append(data, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return writeAtomic(p, data[:nvramSize])
}

// vmxLines collects key = "value" lines; later keys win, output is sorted
// like ESXi's except for the header.
type vmxLines map[string]string

func (l vmxLines) set(key, format string, args ...interface{}) {
	l[key] = fmt.Sprintf(format, args...)
}

func boolString(b *bool) string {
	if b != nil && *b {
		return "TRUE"
	}
	return "FALSE"
}

var guestSuffix64 = regexp.MustCompile(`_?64$`)

// vmxGuestOS maps a vSphere guest id to the .vmx spelling: ubuntu64Guest -> ubuntu-64.
func vmxGuestOS(id string) string {
	id = strings.Replace(id, "Guest", "", 1)
	if guestSuffix64.MatchString(id) {
		id = guestSuffix64.ReplaceAllString(id, "") + "-64"
	}
	return strings.ToLower(id)
}

// vmxUUID writes a UUID as the .vmx does: "56 4d 12 ... 9a-bc de ...".
func vmxUUID(u string) string {
	hex := strings.ReplaceAll(u, "-", "")
	if len(hex) != 32 {
		return u
	}
	var parts []string
	for i := 0; i < 32; i += 2 {
		parts = append(parts, hex[i:i+2])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func renderVMX(vm *simulator.VirtualMachine) string {
	c := vm.Config
	l := vmxLines{}
	l.set("config.version", "8")
	l.set("virtualHW.version", "%s", strings.TrimPrefix(c.Version, "vmx-"))
	l.set("displayName", "%s", c.Name)
	l.set("guestOS", "%s", vmxGuestOS(c.GuestId))
	l.set("memSize", "%d", c.Hardware.MemoryMB)
	l.set("numvcpus", "%d", c.Hardware.NumCPU)
	if c.Hardware.NumCoresPerSocket > 0 {
		l.set("cpuid.coresPerSocket", "%d", c.Hardware.NumCoresPerSocket)
	}
	if c.Firmware != "" {
		l.set("firmware", "%s", c.Firmware)
	}
	l.set("uuid.bios", "%s", vmxUUID(c.Uuid))
	l.set("vc.uuid", "%s", vmxUUID(c.InstanceUuid))
	l.set("nvram", "%s", path.Base(strings.TrimSuffix(c.Files.VmPathName, ".vmx")+".nvram"))
	if c.Annotation != "" {
		l.set("annotation", "%s", c.Annotation)
	}
	tracking := c.ChangeTrackingEnabled != nil && *c.ChangeTrackingEnabled
	l.set("ctkEnabled", "%s", boolString(c.ChangeTrackingEnabled))

	vmxDir := path.Dir(datastoreRel(c.Files.VmPathName))
	vmxDS := datastoreName(c.Files.VmPathName)
	devices := object.VirtualDeviceList(c.Hardware.Device)
	nic := 0
	for _, dev := range c.Hardware.Device {
		d := dev.GetVirtualDevice()
		switch x := dev.(type) {
		case types.BaseVirtualSCSIController:
			sc := x.GetVirtualSCSIController()
			key := fmt.Sprintf("scsi%d", sc.BusNumber)
			l.set(key+".present", "TRUE")
			l.set(key+".virtualDev", "%s", scsiType(dev))
			l.set(key+".sharedBus", "%s", map[string]string{"": "none", "noSharing": "none", "virtualSharing": "virtual", "physicalSharing": "physical"}[string(sc.SharedBus)])
			l.set(key+".pciSlotNumber", "%d", 160+sc.BusNumber)
		case *types.VirtualAHCIController:
			l.set(fmt.Sprintf("sata%d.present", x.BusNumber), "TRUE")
		case *types.VirtualNVMEController:
			l.set(fmt.Sprintf("nvme%d.present", x.BusNumber), "TRUE")
		case *types.VirtualDisk:
			slot := deviceSlot(devices, d)
			if slot == "" {
				continue
			}
			l.set(slot+".present", "TRUE")
			if name := fileBacking(x); name != "" {
				file := datastoreRel(name)
				if datastoreName(name) == vmxDS && path.Dir(file) == vmxDir {
					file = path.Base(file)
				} else {
					file = "/vmfs/volumes/" + datastoreName(name) + "/" + file
				}
				l.set(slot+".fileName", "%s", file)
			}
			if strings.HasPrefix(slot, "scsi") {
				l.set(slot+".deviceType", "scsi-hardDisk")
			}
			if b, ok := x.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.DiskMode != "" && b.DiskMode != "persistent" {
				l.set(slot+".mode", "%s", b.DiskMode)
			}
			if tracking {
				l.set(slot+".ctkEnabled", "TRUE")
			}
		case *types.VirtualCdrom:
			slot := deviceSlot(devices, d)
			if slot == "" || slotTaken(devices, d) {
				// The simulator's model VMs have their CD-ROM on the SCSI
				// controller at the disk's unit; the disk wins.
				continue
			}
			l.set(slot+".present", "TRUE")
			switch b := x.Backing.(type) {
			case *types.VirtualCdromIsoBackingInfo:
				l.set(slot+".deviceType", "cdrom-image")
				l.set(slot+".fileName", "%s", b.FileName)
			default:
				l.set(slot+".deviceType", "atapi-cdrom")
			}
			if d.Connectable != nil {
				l.set(slot+".startConnected", "%s", boolString(&d.Connectable.StartConnected))
			}
		case types.BaseVirtualEthernetCard:
			e := x.GetVirtualEthernetCard()
			key := fmt.Sprintf("ethernet%d", nic)
			nic++
			l.set(key+".present", "TRUE")
			l.set(key+".virtualDev", "%s", nicType(dev))
			switch b := e.Backing.(type) {
			case *types.VirtualEthernetCardNetworkBackingInfo:
				l.set(key+".networkName", "%s", b.DeviceName)
			case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
				l.set(key+".dvs.switchId", "%s", b.Port.SwitchUuid)
				l.set(key+".dvs.portgroupId", "%s", b.Port.PortgroupKey)
				if b.Port.PortKey != "" {
					l.set(key+".dvs.portId", "%s", b.Port.PortKey)
				}
			case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
				l.set(key+".opaqueNetwork.id", "%s", b.OpaqueNetworkId)
				l.set(key+".opaqueNetwork.type", "%s", b.OpaqueNetworkType)
			}
			switch e.AddressType {
			case "manual":
				l.set(key+".addressType", "static")
				l.set(key+".address", "%s", e.MacAddress)
			case "generated": // by the host
				l.set(key+".addressType", "generated")
				l.set(key+".generatedAddress", "%s", e.MacAddress)
			default: // "assigned": by vCenter
				l.set(key+".addressType", "vpx")
				l.set(key+".generatedAddress", "%s", e.MacAddress)
			}
			if d.Connectable != nil {
				l.set(key+".startConnected", "%s", boolString(&d.Connectable.StartConnected))
			}
		}
	}
	for _, o := range c.ExtraConfig {
		v := o.GetOptionValue()
		l.set(v.Key, "%v", v.Value)
	}

	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(vmxMarker + "\n")
	b.WriteString(".encoding = \"UTF-8\"\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = \"%s\"\n", k, strings.ReplaceAll(l[k], `"`, `|22`))
	}
	return b.String()
}

// deviceSlot names a disk's or CD-ROM's place: scsi0:1, ide1:0, sata0:2, nvme0:0.
func deviceSlot(devices object.VirtualDeviceList, d *types.VirtualDevice) string {
	if d.UnitNumber == nil {
		return ""
	}
	ctl := devices.FindByKey(d.ControllerKey)
	if ctl == nil {
		return ""
	}
	var bus string
	switch x := ctl.(type) {
	case types.BaseVirtualSCSIController:
		bus = fmt.Sprintf("scsi%d", x.GetVirtualSCSIController().BusNumber)
	case *types.VirtualIDEController:
		bus = fmt.Sprintf("ide%d", x.BusNumber)
	case *types.VirtualAHCIController:
		bus = fmt.Sprintf("sata%d", x.BusNumber)
	case *types.VirtualNVMEController:
		bus = fmt.Sprintf("nvme%d", x.BusNumber)
	default:
		return ""
	}
	return fmt.Sprintf("%s:%d", bus, *d.UnitNumber)
}

// slotTaken says whether a disk sits at the same controller and unit as d.
func slotTaken(devices object.VirtualDeviceList, d *types.VirtualDevice) bool {
	for _, dev := range devices {
		o := dev.GetVirtualDevice()
		if _, disk := dev.(*types.VirtualDisk); disk && o.ControllerKey == d.ControllerKey &&
			o.UnitNumber != nil && *o.UnitNumber == *d.UnitNumber {
			return true
		}
	}
	return false
}

func scsiType(dev types.BaseVirtualDevice) string {
	switch dev.(type) {
	case *types.ParaVirtualSCSIController:
		return "pvscsi"
	case *types.VirtualLsiLogicSASController:
		return "lsisas1068"
	case *types.VirtualBusLogicController:
		return "buslogic"
	default:
		return "lsilogic"
	}
}

func nicType(dev types.BaseVirtualDevice) string {
	switch dev.(type) {
	case *types.VirtualVmxnet3:
		return "vmxnet3"
	case *types.VirtualE1000e:
		return "e1000e"
	case *types.VirtualE1000:
		return "e1000"
	case *types.VirtualVmxnet2:
		return "vmxnet2"
	case *types.VirtualPCNet32:
		return "vlance"
	default:
		return "vmxnet3"
	}
}

func datastoreName(p string) string {
	var d object.DatastorePath
	d.FromString(p)
	return d.Datastore
}

func datastoreRel(p string) string {
	var d object.DatastorePath
	d.FromString(p)
	return d.Path
}
