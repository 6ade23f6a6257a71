package main

// What a real vCenter does and the govmomi simulator does not, so that the
// backup is tested against vSphere as it behaves (added by repofs):
//
//   - A snapshot freezes the disks. At CreateSnapshot each disk's flat extent is
//     copied (sparsely) to "<descriptor without .vmdk>-<snapshot moref>.frozen";
//     the VDDK stand-in, connected with that snapshot, reads the copy, so guest
//     writes made after the snapshot (to the live flat file) are not seen, as
//     they would go to a delta disk. RemoveSnapshot drops the copy.
//   - RevertToSnapshot puts the frozen content back into the live disks, and,
//     as on a real host, changed-block tracking does not record it: change ids
//     issued before the revert answer as if nothing had changed. vCenter posts
//     the event com.vmware.vc.vm.VmStateRevertedToSnapshot (an EventEx).
//   - Turning changed-block tracking on while the VM has snapshots gives
//     incomplete answers without a fault (KB 1020128): queries with a change id
//     answer no changed areas until tracking is switched on again with no
//     snapshot present.
//   - Tracking cannot be switched on for a VM of hardware version < 7, a
//     template, or a VM with a multi-writer disk: the reconfiguration fails.
//   - Encrypting a disk (a device edit with backing.crypto = CryptoSpecEncrypt)
//     shows the key in the disk's backing (keyId), as vCenter does; the
//     simulator ignores the crypto spec. Only what a backup and a restore read
//     of it is modelled: the data stays as it is.
//   - A template cannot be snapshotted: CreateSnapshot_Task and
//     CreateSnapshotEx_Task on one fail at once with NotSupported, as vCenter
//     answers for a method a template does not allow (the simulator snapshots it).
//   - extraConfig repofs.vcsim.consolidationFault = "TRUE": a snapshot removal
//     succeeds but leaves runtime.consolidationNeeded set, as a removal whose
//     disk merge failed does; ConsolidateVMDisks_Task clears it.
//   - -session-idle-timeout: sessions idle that long expire (vCenter: 30 min).
//
// The frozen copies cost a copy of each disk at every snapshot, where a real
// host only starts a delta disk: -freeze-snapshots=false turns them off for
// benchmarks, which then measure repofs rather than this model.

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	consolidationFaultKey = "repofs.vcsim.consolidationFault"
	revertEventType       = "com.vmware.vc.vm.VmStateRevertedToSnapshot"
)

// incompleteTracking marks disks whose tracking was switched on while their VM
// had snapshots (callers hold frontHandler.mu).
var incompleteTracking = map[string]bool{}

func frozenPath(descPath, snapshot string) string {
	return strings.TrimSuffix(descPath, ".vmdk") + "-" + snapshot + ".frozen"
}

func flatPath(descPath string) string {
	return filepath.Join(filepath.Dir(descPath), flatName(descPath))
}

// sparseCopy copies src to dst keeping holes (cp does SEEK_DATA/SEEK_HOLE).
func sparseCopy(src, dst string) error {
	out, err := exec.Command("cp", "--sparse=always", "--", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp %s %s: %v: %s", src, dst, err, out)
	}
	return nil
}

func vmByRef(ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

func disksOfVM(vm *simulator.VirtualMachine) []string {
	var disks []diskFile
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			disks = vmDisks(vm.Config.Hardware.Device)
		}
	})
	var out []string
	for _, d := range disks {
		if p, err := localPath(d.datastorePath); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// frozenDisks are copies of a VM's disks made just before a snapshot is
// created, renamed to the snapshot's frozen files once it exists. Copying
// before the snapshot exists means that no write the test makes once it sees
// the snapshot can reach the copy.
type frozenDisks struct{ pending map[string]string } // descriptor -> copy

var frozenSeq int

// freezeSnapshots is -freeze-snapshots.
var freezeSnapshots = true

func freezeDisks(vmRef types.ManagedObjectReference) *frozenDisks {
	f := &frozenDisks{pending: map[string]string{}}
	vm := vmByRef(vmRef)
	if vm == nil || !freezeSnapshots {
		return f
	}
	for _, desc := range disksOfVM(vm) {
		frozenSeq++
		tmp := frozenPath(desc, fmt.Sprintf("pending%d", frozenSeq))
		if err := sparseCopy(flatPath(desc), tmp); err != nil {
			log.Printf("freeze %s: %v", desc, err)
			continue
		}
		f.pending[desc] = tmp
	}
	return f
}

// keep makes the copies the frozen state of snapRef.
func (f *frozenDisks) keep(snapRef types.ManagedObjectReference) {
	for desc, tmp := range f.pending {
		if err := os.Rename(tmp, frozenPath(desc, snapRef.Value)); err != nil {
			log.Printf("freeze %s: %v", desc, err)
		}
	}
	f.pending = map[string]string{}
}

// drop removes copies that no snapshot kept (the create failed).
func (f *frozenDisks) drop() {
	for _, tmp := range f.pending {
		_ = os.Remove(tmp)
	}
}

// dropFrozen forgets the frozen state of the given snapshots of a VM ("*": all).
func dropFrozen(vm *simulator.VirtualMachine, snapshot string) {
	for _, desc := range disksOfVM(vm) {
		matches, _ := filepath.Glob(strings.TrimSuffix(desc, ".vmdk") + "-" + snapshot + ".frozen")
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
}

// revertDisks puts the snapshot's frozen state back into the live disks,
// without a word to changed-block tracking.
func revertDisks(vm *simulator.VirtualMachine, snapshot string) {
	for _, desc := range disksOfVM(vm) {
		frozen := frozenPath(desc, snapshot)
		if _, err := os.Stat(frozen); err != nil {
			continue
		}
		tmp := flatPath(desc) + ".reverting"
		if err := sparseCopy(frozen, tmp); err != nil {
			log.Printf("revert %s: %v", desc, err)
			continue
		}
		if err := os.Rename(tmp, flatPath(desc)); err != nil {
			log.Printf("revert %s: %v", desc, err)
		}
	}
}

// revertEventBody is a PostEvent of the EventEx that vCenter posts on a revert.
func revertEventBody(vm *simulator.VirtualMachine, snapshot string) []byte {
	var name string
	simulator.Map.WithLock(vm, func() { name = vm.Name })
	inner := fmt.Sprintf(`<PostEvent xmlns="urn:vim25"><_this type="EventManager">EventManager</_this>`+
		`<eventToPost xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="EventEx">`+
		`<key>0</key><chainId>0</chainId><createdTime>%s</createdTime><userName></userName>`+
		`<vm><name>%s</name><vm type="VirtualMachine">%s</vm></vm>`+
		`<fullFormattedMessage>%s reverted to snapshot %s</fullFormattedMessage>`+
		`<eventTypeId>%s</eventTypeId><severity>info</severity>`+
		`<objectId>%s</objectId><objectType>VirtualMachine</objectType></eventToPost></PostEvent>`,
		time.Now().UTC().Format(time.RFC3339Nano), escape(name), escape(vm.Self.Value),
		escape(name), escape(snapshot), revertEventType, escape(vm.Self.Value))
	return []byte(envelopeOpen + inner + envelopeClose)
}

// hasSnapshots says whether the VM has any snapshot.
func hasSnapshots(vm *simulator.VirtualMachine) bool {
	has := false
	simulator.Map.WithLock(vm, func() {
		has = vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0
	})
	return has
}

// noteTrackingSwitchedOn records KB 1020128: tracking switched on with
// snapshots present is incomplete until switched on again without.
func noteTrackingSwitchedOn(vmRef types.ManagedObjectReference) {
	vm := vmByRef(vmRef)
	if vm == nil {
		return
	}
	with := hasSnapshots(vm)
	for _, desc := range disksOfVM(vm) {
		if with {
			incompleteTracking[desc] = true
		} else {
			delete(incompleteTracking, desc)
		}
	}
}

// hardwareVersion: "vmx-13" -> 13 (0 when unknown).
func hardwareVersion(version string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(version, "vmx-"))
	if err != nil {
		return 0
	}
	return n
}

// cannotTrack says why changed-block tracking cannot be switched on, or "".
func cannotTrack(vm *simulator.VirtualMachine) string {
	reason := ""
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		if v := hardwareVersion(vm.Config.Version); v != 0 && v < 7 {
			reason = fmt.Sprintf("changed block tracking needs virtual hardware version 7 or later (the VM has %s)", vm.Config.Version)
			return
		}
		if vm.Config.Template {
			reason = "changed block tracking is not supported on templates"
			return
		}
		for _, dev := range vm.Config.Hardware.Device {
			d, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			if b, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.Sharing == string(types.VirtualDiskSharingSharingMultiWriter) {
				reason = "changed block tracking is not supported with multi-writer disks"
				return
			}
		}
	})
	return reason
}

// refusedTask is a failed task of the VM with a NotSupported fault whose
// localized message says why (the simulator's own says only the fault's type).
func refusedTask(vm *simulator.VirtualMachine, name, message string) types.ManagedObjectReference {
	fault := &types.NotSupported{}
	task := simulator.CreateTask(vm, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: message}},
		})
	})
	return ref
}

// setConsolidationNeeded sets or clears runtime.consolidationNeeded (the
// whole runtime is replaced: the registry applies changes to top-level paths).
func setConsolidationNeeded(vm *simulator.VirtualMachine, on bool) {
	simulator.Map.WithLock(vm, func() {
		runtime := vm.Runtime
		v := on
		runtime.ConsolidationNeeded = &v
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "runtime", Val: runtime}})
	})
}

func wantsConsolidationFault(vm *simulator.VirtualMachine) bool {
	on := false
	simulator.Map.WithLock(vm, func() { on = vm.Config != nil && extraConfigTrue(vm, consolidationFaultKey) })
	return on
}

// consolidateTask answers ConsolidateVMDisks_Task, which the simulator lacks.
func consolidateTask(vm *simulator.VirtualMachine) types.ManagedObjectReference {
	task := simulator.CreateTask(vm, "consolidateVMDisks", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		setConsolidationNeeded(vm, false)
		return nil, nil
	})
	return task.Run()
}

// templateSnapshotFault is the fault vCenter answers to a snapshot of a
// template, or nil when vmRef is no template: a template is never powered on
// and its disks do not change, so it has no snapshots to take.
func templateSnapshotFault(vmRef types.ManagedObjectReference) *cbtFault {
	vm := vmByRef(vmRef)
	if vm == nil {
		return nil
	}
	template := false
	simulator.Map.WithLock(vm, func() { template = vm.Config != nil && vm.Config.Template })
	if !template {
		return nil
	}
	return &cbtFault{kind: "NotSupported", message: "The operation is not supported on the object."}
}

// applyDiskEncryption gives each disk that a device edit of spec encrypts the
// key it is encrypted with (its backing's keyId).
func applyDiskEncryption(vmRef types.ManagedObjectReference, spec *types.VirtualMachineConfigSpec) {
	vm := vmByRef(vmRef)
	if vm == nil {
		return
	}
	keys := map[int32]types.CryptoKeyId{}
	for _, change := range spec.DeviceChange {
		c := change.GetVirtualDeviceConfigSpec()
		if c.Backing == nil || c.Operation != types.VirtualDeviceConfigSpecOperationEdit {
			continue
		}
		if enc, ok := c.Backing.Crypto.(*types.CryptoSpecEncrypt); ok {
			if _, disk := c.Device.(*types.VirtualDisk); disk {
				keys[c.Device.GetVirtualDevice().Key] = enc.CryptoKeyId
			}
		}
	}
	if len(keys) == 0 {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, dev := range vm.Config.Hardware.Device {
			d, ok := dev.(*types.VirtualDisk)
			if !ok {
				continue
			}
			id, ok := keys[d.Key]
			if b, flat := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && flat {
				key := id
				b.KeyId = &key
			}
		}
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
	})
}
