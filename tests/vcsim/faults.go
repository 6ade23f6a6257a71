package main

// Fault injection for snapshots, so that tests can see a backup retry without
// quiescing and give up cleanly. Set per VM in its extraConfig (ReconfigVM_Task
// with extraConfig; the last value of a key wins, "" or "FALSE" turns it off):
//
//	repofs.vcsim.quiesceFault  = "TRUE"  quiesced snapshots fail (ApplicationQuiesceFault)
//	repofs.vcsim.snapshotFault = "TRUE"  every snapshot fails (SnapshotFault)

import (
	"fmt"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	quiesceFaultKey  = "repofs.vcsim.quiesceFault"
	snapshotFaultKey = "repofs.vcsim.snapshotFault"
)

func extraConfigTrue(vm *simulator.VirtualMachine, key string) bool {
	value := ""
	for _, o := range vm.Config.ExtraConfig {
		if v := o.GetOptionValue(); v.Key == key {
			value = fmt.Sprint(v.Value)
		}
	}
	return strings.EqualFold(value, "true")
}

// injectedSnapshotFault returns a failed snapshot task when the VM asks for one.
func injectedSnapshotFault(vmRef types.ManagedObjectReference, quiesce bool) *types.ManagedObjectReference {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	var fault types.BaseMethodFault
	simulator.Map.WithLock(vm, func() {
		switch {
		case vm.Config == nil:
		case extraConfigTrue(vm, snapshotFaultKey):
			fault = &types.SnapshotFault{}
		case quiesce && extraConfigTrue(vm, quiesceFaultKey):
			fault = &types.ApplicationQuiesceFault{}
		}
	})
	if fault == nil {
		return nil
	}
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	return &ref
}
