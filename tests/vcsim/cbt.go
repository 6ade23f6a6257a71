package main

// Changed-block tracking, which the govmomi simulator does not have; added by
// repofs for its backup tests.
//
// What a disk changed is recorded by whoever writes it: after every successful
// write the VDDK stand-in (and a test that changes a flat file directly)
// appends one line "<offset_bytes> <length_bytes>\n" to the disk's ctk log,
// "<descriptor without .vmdk>-ctk.log" beside the descriptor.
//
// A change id is "<disk uuid>/<N>": the disk's ddb.uuid (so that an id of
// another disk, or of a copy, is refused; mixed with a count of how often
// tracking was switched on again, which resets it) and N, the byte length of
// the ctk log when the id was issued. Ids are issued when a snapshot of a VM with
// changeTrackingEnabled is taken, and land on
// snapshot.config.hardware.device[].backing.changeId (and on the VM's current
// disks). QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId)
// answers the union of the log's ranges between the position in changeId
// and the position in the snapshot's own change id, rounded out to 64 KiB;
// changeId "*" answers the allocated areas of the flat extent. Each answer
// covers at most cbtPageSize bytes from startOffset, so clients loop until
// startOffset+length reaches the capacity, as with vCenter.

import (
	"bufio"
	"crypto/sha1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	cbtGranularity     = 64 * 1024
	defaultCBTPageSize = 256 * 1024 * 1024
)

// cbtPageSize is the part of a disk one QueryChangedDiskAreas answer covers (-cbt-page-size).
var cbtPageSize int64 = defaultCBTPageSize

// extent is a byte range [start, start+length).
type extent struct{ start, length int64 }

func (e extent) end() int64 { return e.start + e.length }

// ctkLogPath: /ds/vm1/vm1.vmdk -> /ds/vm1/vm1-ctk.log
func ctkLogPath(descPath string) string {
	return strings.TrimSuffix(descPath, ".vmdk") + "-ctk.log"
}

func ctkLogSize(descPath string) (int64, error) {
	st, err := os.Stat(ctkLogPath(descPath))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// issueChangeID returns a change id naming the disk's current position in its ctk log.
func issueChangeID(descPath string) (string, error) {
	id, err := trackingIdentity(descPath)
	if err != nil {
		return "", err
	}
	n, err := ctkLogSize(descPath)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s/%d", id, n), nil
}

// trackingEpochs counts, per disk, how often tracking was switched on again:
// as with vCenter, that resets tracking, and the change ids issued before no
// longer count. (Callers hold frontHandler.mu.)
var trackingEpochs = map[string]int{}

// trackingIdentity is the part of a disk's change ids before the slash: its
// ddb.uuid mixed with its tracking epoch, in the same 16-byte notation.
func trackingIdentity(descPath string) (string, error) {
	uuid, err := diskIdentity(descPath)
	if err != nil {
		return "", err
	}
	if epoch := trackingEpochs[descPath]; epoch > 0 {
		sum := sha1.Sum([]byte(fmt.Sprintf("%s/%d", uuid, epoch)))
		return formatUUID(sum[:16]), nil
	}
	return uuid, nil
}

// resetTracking starts a new tracking epoch for the disk at datastorePath.
func resetTracking(datastorePath string) {
	if p, err := localPath(datastorePath); err == nil {
		trackingEpochs[p]++
	}
}

// trackingOn says whether the VM has changeTrackingEnabled.
func trackingOn(vmRef types.ManagedObjectReference) bool {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	on := false
	simulator.Map.WithLock(vm, func() {
		on = vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	})
	return on
}

// afterTrackingChange resets tracking of the VM's disks when a
// reconfiguration switched it on.
func afterTrackingChange(vmRef types.ManagedObjectReference, wasOn bool) {
	if wasOn || !trackingOn(vmRef) {
		return
	}
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var disks []diskFile
	simulator.Map.WithLock(vm, func() { disks = vmDisks(vm.Config.Hardware.Device) })
	for _, d := range disks {
		resetTracking(d.datastorePath)
	}
}

// parseChangeID splits "<uuid>/<N>".
func parseChangeID(changeID string) (string, int64, bool) {
	i := strings.LastIndex(changeID, "/")
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseInt(changeID[i+1:], 10, 64)
	if err != nil || n < 0 {
		return "", 0, false
	}
	return changeID[:i], n, true
}

// backingChangeID reads or writes backing.changeId on any backing type that has one.
func backingChangeID(d *types.VirtualDisk) *string {
	v := reflect.ValueOf(d.Backing)
	if !v.IsValid() || v.Kind() != reflect.Ptr || v.IsNil() {
		return nil
	}
	f := v.Elem().FieldByName("ChangeId")
	if !f.IsValid() || f.Kind() != reflect.String {
		return nil
	}
	return f.Addr().Interface().(*string)
}

// loggedChanges reads the ranges logged in [from, to) of the ctk log.
func loggedChanges(descPath string, from, to int64) ([]extent, error) {
	if from == to {
		return nil, nil
	}
	f, err := os.Open(ctkLogPath(descPath))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []extent
	scanner := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("ctk log %s: bad line %q", ctkLogPath(descPath), line)
		}
		off, err1 := strconv.ParseInt(fields[0], 10, 64)
		length, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil || off < 0 || length < 0 {
			return nil, fmt.Errorf("ctk log %s: bad line %q", ctkLogPath(descPath), line)
		}
		if length > 0 {
			out = append(out, extent{off, length})
		}
	}
	return out, scanner.Err()
}

// allocatedExtents lists the data (non-hole) regions of a file in [from, limit).
func allocatedExtents(path string, from, limit int64) ([]extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const seekData, seekHole = 3, 4 // SEEK_DATA, SEEK_HOLE (Linux)
	fd := int(f.Fd())
	var out []extent
	pos := from
	for pos < limit {
		start, err := syscall.Seek(fd, pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after pos
		}
		if err != nil {
			return nil, err
		}
		end, err := syscall.Seek(fd, start, seekHole)
		if err != nil {
			return nil, err
		}
		if start >= limit {
			break
		}
		if end > limit {
			end = limit
		}
		out = append(out, extent{start, end - start})
		pos = end
	}
	return out, nil
}

// normalize rounds every extent out to the CBT granularity, clips it to
// capacity, sorts and merges overlapping or touching extents.
func normalize(in []extent, capacity int64) []extent {
	var rounded []extent
	for _, e := range in {
		start := e.start / cbtGranularity * cbtGranularity
		end := (e.end() + cbtGranularity - 1) / cbtGranularity * cbtGranularity
		if end > capacity {
			end = capacity
		}
		if start < end {
			rounded = append(rounded, extent{start, end - start})
		}
	}
	sort.Slice(rounded, func(i, j int) bool { return rounded[i].start < rounded[j].start })
	var out []extent
	for _, e := range rounded {
		if n := len(out); n > 0 && e.start <= out[n-1].end() {
			if e.end() > out[n-1].end() {
				out[n-1].length = e.end() - out[n-1].start
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// clip keeps the parts of extents inside [start, end).
func clip(in []extent, start, end int64) []extent {
	var out []extent
	for _, e := range in {
		s, t := e.start, e.end()
		if s < start {
			s = start
		}
		if t > end {
			t = end
		}
		if s < t {
			out = append(out, extent{s, t - s})
		}
	}
	return out
}

// cbtFault is a vSphere fault to send back to the client.
type cbtFault struct {
	kind    string // "InvalidArgument", "FileFault", "ManagedObjectNotFound", ...
	message string
	field   string // invalidProperty for InvalidArgument, file for FileFault
	obj     *types.ManagedObjectReference
}

func (f *cbtFault) Error() string { return f.message }

func invalidArgument(property, message string) *cbtFault {
	return &cbtFault{kind: "InvalidArgument", message: message, field: property}
}

func fileFault(file, message string) *cbtFault {
	return &cbtFault{kind: "FileFault", message: message, field: file}
}

// queryChangedDiskAreas answers VirtualMachine.QueryChangedDiskAreas.
func queryChangedDiskAreas(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *cbtFault) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		this := req.This
		return nil, &cbtFault{kind: "ManagedObjectNotFound", message: "managed object not found: " + req.This.String(), obj: &this}
	}
	snapRef := req.Snapshot
	if snapRef == nil {
		simulator.Map.WithLock(vm, func() {
			if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
				ref := *vm.Snapshot.CurrentSnapshot
				snapRef = &ref
			}
		})
		if snapRef == nil {
			return nil, invalidArgument("snapshot", "the virtual machine has no snapshot")
		}
	}
	snap, ok := simulator.Map.Get(*snapRef).(*simulator.VirtualMachineSnapshot)
	if !ok || snap.Vm != vm.Self {
		return nil, invalidArgument("snapshot", "the snapshot is not a snapshot of this virtual machine")
	}

	var disk *types.VirtualDisk
	var snapChangeID string
	simulator.Map.WithLock(snap, func() {
		for _, dev := range snap.Config.Hardware.Device {
			if d, ok := dev.(*types.VirtualDisk); ok && d.Key == req.DeviceKey {
				copied := *d
				disk = &copied
				if id := backingChangeID(d); id != nil {
					snapChangeID = *id
				}
			}
		}
	})
	if disk == nil || fileBacking(disk) == "" {
		return nil, invalidArgument("deviceKey", fmt.Sprintf("no virtual disk with key %d in the snapshot", req.DeviceKey))
	}
	if info := injectedChangedAreas(vm, req.StartOffset, diskCapacity(disk)); info != nil {
		return info, nil
	}
	return changedAreas(fileBacking(disk), diskCapacity(disk), snapChangeID, req.StartOffset, req.ChangeId)
}

// changedAreas answers a changed-block query for the disk whose descriptor is
// at datastorePath, of capacity bytes, as of a snapshot whose change id for it
// is snapChangeID ("" when the snapshot was taken without tracking).
func changedAreas(datastorePath string, capacity int64, snapChangeID string, startOffset int64, changeID string) (*types.DiskChangeInfo, *cbtFault) {
	descPath, err := localPath(datastorePath)
	if err != nil {
		return nil, fileFault(datastorePath, err.Error())
	}
	if startOffset < 0 || startOffset >= capacity {
		return nil, invalidArgument("startOffset", fmt.Sprintf("startOffset %d is outside the disk (%d bytes)", startOffset, capacity))
	}
	end := startOffset + cbtPageSize
	if end > capacity {
		end = capacity
	}
	var changed []extent
	if changeID == "*" {
		// Only this page's part of the file (from its 64 KiB boundary, as areas round out).
		from := startOffset / cbtGranularity * cbtGranularity
		changed, err = allocatedExtents(filepath.Join(filepath.Dir(descPath), flatName(descPath)), from, end)
		if err != nil {
			return nil, fileFault(descPath, err.Error())
		}
	} else {
		ctk := ctkLogPath(descPath)
		wantID, from, ok := parseChangeID(changeID)
		if !ok {
			return nil, invalidArgument("changeId", fmt.Sprintf("malformed change id %q", changeID))
		}
		haveID, to, ok := parseChangeID(snapChangeID)
		if !ok {
			return nil, fileFault(ctk, "changed-block tracking was not enabled on this disk when the snapshot was taken")
		}
		if wantID != haveID {
			return nil, fileFault(ctk, fmt.Sprintf("change id %q does not belong to this disk", changeID))
		}
		if from > to {
			return nil, fileFault(ctk, fmt.Sprintf("change id %q is newer than the snapshot", changeID))
		}
		size, err := ctkLogSize(descPath)
		if err != nil || size < to {
			return nil, fileFault(ctk, "the change tracking log was reset")
		}
		changed, err = loggedChanges(descPath, from, to)
		if err != nil {
			return nil, fileFault(ctk, err.Error())
		}
		if incompleteTracking[descPath] {
			changed = nil // harsh.go: KB 1020128, incomplete without a fault
		}
	}

	info := &types.DiskChangeInfo{StartOffset: startOffset, Length: end - startOffset}
	for _, e := range clip(normalize(changed, capacity), startOffset, end) {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: e.start, Length: e.length})
	}
	return info, nil
}

// prepareSnapshot runs before a snapshot of vmRef is taken: with
// changeTrackingEnabled, every disk gets a fresh change id (the snapshot
// copies the VM's config, so the snapshot carries it); without, change ids
// are cleared, as vCenter does.
func prepareSnapshot(vmRef types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		tracking := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
		for _, dev := range vm.Config.Hardware.Device {
			d, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			id := backingChangeID(d)
			if id == nil {
				continue
			}
			if !tracking || fileBacking(d) == "" {
				*id = ""
				continue
			}
			descPath, err := localPath(fileBacking(d))
			if err == nil {
				*id, err = issueChangeID(descPath)
			}
			if err != nil {
				log.Printf("change id for %s: %v", fileBacking(d), err)
				*id = ""
			}
		}
	})
}

// currentSnapshot returns the VM's current snapshot, if any.
func currentSnapshot(vmRef types.ManagedObjectReference) *types.ManagedObjectReference {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	var out *types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
			ref := *vm.Snapshot.CurrentSnapshot
			out = &ref
		}
	})
	return out
}

// detachSnapshotConfig gives a new snapshot its own copy of the VM's config.
// The simulator copies the config struct only: its device list and the
// devices themselves stay shared with the VM, so a later reconfiguration or
// change id of the VM would rewrite the snapshot's past.
func detachSnapshotConfig(snapRef types.ManagedObjectReference) error {
	snap, ok := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return fmt.Errorf("%s: no such snapshot", snapRef)
	}
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("%s: no such virtual machine", snap.Vm)
	}
	var err error
	// Lock order snapshot -> VM, as the simulator's RemoveSnapshot_Task does.
	simulator.Map.WithLock(snap, func() {
		var copied types.VirtualMachineConfigInfo
		simulator.Map.WithLock(vm, func() {
			copied, err = copyConfig(&snap.Config)
		})
		if err == nil {
			snap.Config = copied
		}
	})
	return err
}

// changedAreasKey, set in a VM's extraConfig (ReconfigVM_Task; "" turns it
// off), replaces every QueryChangedDiskAreas answer for the VM's disks with
// the JSON document it holds, verbatim:
//
//	{"startOffset": N, "length": N, "areas": [[start, length], ...]}
//
// (startOffset defaults to the requested one, length to the rest of the
// disk), so that tests can see what a client does with a server's nonsense:
// areas beyond the disk, negative, overlapping, outside the answer's range.
const changedAreasKey = "repofs.vcsim.changedAreas"

func injectedChangedAreas(vm *simulator.VirtualMachine, startOffset, capacity int64) *types.DiskChangeInfo {
	value := ""
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, o := range vm.Config.ExtraConfig {
			if v := o.GetOptionValue(); v.Key == changedAreasKey {
				value = fmt.Sprint(v.Value)
			}
		}
	})
	if value == "" {
		return nil
	}
	var doc struct {
		StartOffset *int64     `json:"startOffset"`
		Length      *int64     `json:"length"`
		Areas       [][2]int64 `json:"areas"`
	}
	if err := json.Unmarshal([]byte(value), &doc); err != nil {
		log.Printf("%s: not JSON: %v", changedAreasKey, err)
		return nil
	}
	info := &types.DiskChangeInfo{StartOffset: startOffset, Length: capacity - startOffset}
	if doc.StartOffset != nil {
		info.StartOffset = *doc.StartOffset
	}
	if doc.Length != nil {
		info.Length = *doc.Length
	}
	for _, a := range doc.Areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a[0], Length: a[1]})
	}
	return info
}
