package main

// vApps as a backup captures them and a restore rebuilds them. The simulator
// creates vApps and their child VMs, but
//
//   - keeps only the annotation and products of CreateVApp's configSpec
//     (properties, IP assignment, EULAs, entity configs are dropped);
//   - has no UpdateVAppConfig;
//   - leaves a child VM's parentVApp unset and the vApp's entityConfig empty.
//
// We apply the rest of the configSpec after CreateVApp, answer
// UpdateVAppConfig ourselves, and after CreateChildVM_Task set parentVApp and
// add the VM's entity config, as vCenter does.

import (
	"fmt"
	"regexp"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var vappReturnval = regexp.MustCompile(`<returnval type="VirtualApp">([^<]+)</returnval>`)

func vappOf(ref types.ManagedObjectReference) *simulator.VirtualApp {
	app, _ := simulator.Map.Get(ref).(*simulator.VirtualApp)
	return app
}

// arrayOp is one element of an ArrayUpdateSpec list: add, edit or remove.
type arrayOp[T any] struct {
	operation types.ArrayUpdateOperation
	removeKey types.AnyType
	info      *T
}

// applyArray applies add/edit/remove operations to a list keyed by key().
func applyArray[T any](list []T, ops []arrayOp[T], key func(*T) int32) []T {
	for _, op := range ops {
		switch op.operation {
		case types.ArrayUpdateOperationAdd:
			if op.info != nil {
				list = append(list, *op.info)
			}
		case types.ArrayUpdateOperationEdit:
			if op.info == nil {
				continue
			}
			for i := range list {
				if key(&list[i]) == key(op.info) {
					list[i] = *op.info
				}
			}
		case types.ArrayUpdateOperationRemove:
			var kept []T
			for i := range list {
				if fmt.Sprint(key(&list[i])) != fmt.Sprint(op.removeKey) {
					kept = append(kept, list[i])
				}
			}
			list = kept
		}
	}
	return list
}

// applyVAppSpec applies a VAppConfigSpec to a vApp's config; products only
// when asked (CreateVApp applied them already).
func applyVAppSpec(cfg *types.VAppConfigInfo, spec *types.VAppConfigSpec, products bool) {
	if spec.Annotation != "" {
		cfg.Annotation = spec.Annotation
	}
	if spec.InstanceUuid != "" {
		cfg.InstanceUuid = spec.InstanceUuid
	}
	if spec.ManagedBy != nil {
		cfg.ManagedBy = spec.ManagedBy
	}
	applyVmConfigSpec(&cfg.VmConfigInfo, &spec.VmConfigSpec, products)
	for _, e := range spec.EntityConfig {
		setEntityConfig(cfg, e)
	}
}

// applyVmConfigSpec applies the vApp options common to vApps and VMs.
func applyVmConfigSpec(cfg *types.VmConfigInfo, spec *types.VmConfigSpec, products bool) {
	if products {
		var ops []arrayOp[types.VAppProductInfo]
		for _, p := range spec.Product {
			ops = append(ops, arrayOp[types.VAppProductInfo]{p.Operation, p.RemoveKey, p.Info})
		}
		cfg.Product = applyArray(cfg.Product, ops, func(p *types.VAppProductInfo) int32 { return p.Key })
	}
	var props []arrayOp[types.VAppPropertyInfo]
	for _, p := range spec.Property {
		props = append(props, arrayOp[types.VAppPropertyInfo]{p.Operation, p.RemoveKey, p.Info})
	}
	cfg.Property = applyArray(cfg.Property, props, func(p *types.VAppPropertyInfo) int32 { return p.Key })
	if spec.IpAssignment != nil {
		cfg.IpAssignment = *spec.IpAssignment
	}
	if spec.Eula != nil {
		cfg.Eula = spec.Eula
	}
	if spec.OvfEnvironmentTransport != nil {
		cfg.OvfEnvironmentTransport = spec.OvfEnvironmentTransport
	}
	if spec.InstallBootRequired != nil {
		cfg.InstallBootRequired = *spec.InstallBootRequired
	}
	if spec.InstallBootStopDelay != 0 {
		cfg.InstallBootStopDelay = spec.InstallBootStopDelay
	}
}

// applyVMVAppConfig keeps a VM's own vApp options (ConfigSpec.vAppConfig,
// vAppConfigRemoved), which the simulator drops.
func applyVMVAppConfig(vmRef types.ManagedObjectReference, spec *types.VirtualMachineConfigSpec) {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok || (spec.VAppConfig == nil && spec.VAppConfigRemoved == nil) {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		var cfg *types.VmConfigInfo
		if spec.VAppConfigRemoved == nil || !*spec.VAppConfigRemoved {
			cfg = &types.VmConfigInfo{}
			if old, ok := vm.Config.VAppConfig.(*types.VmConfigInfo); ok && old != nil {
				copied := *old
				cfg = &copied
			}
			if s, ok := spec.VAppConfig.(*types.VmConfigSpec); ok && s != nil {
				applyVmConfigSpec(cfg, s, true)
			}
		}
		var val types.BaseVmConfigInfo
		if cfg != nil {
			val = cfg
		}
		vm.Config.VAppConfig = val
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.vAppConfig", Val: val}})
	})
}

// setEntityConfig replaces the entity config of e.Key, or adds it.
func setEntityConfig(cfg *types.VAppConfigInfo, e types.VAppEntityConfigInfo) {
	if e.Key == nil {
		return
	}
	for i := range cfg.EntityConfig {
		if k := cfg.EntityConfig[i].Key; k != nil && *k == *e.Key {
			cfg.EntityConfig[i] = e
			return
		}
	}
	cfg.EntityConfig = append(cfg.EntityConfig, e)
}

// updateVApp applies spec to the vApp, under its lock, and tells property collectors.
func updateVApp(app *simulator.VirtualApp, spec *types.VAppConfigSpec, products bool) {
	simulator.Map.WithLock(app, func() {
		if app.VAppConfig == nil {
			app.VAppConfig = &types.VAppConfigInfo{}
		}
		applyVAppSpec(app.VAppConfig, spec, products)
		simulator.Map.Update(app, []types.PropertyChange{{Name: "vAppConfig", Val: app.VAppConfig}})
	})
}

// afterCreateVApp applies what CreateVApp dropped of its configSpec.
func afterCreateVApp(req *types.CreateVApp, response []byte) {
	m := vappReturnval.FindSubmatch(response)
	if m == nil {
		return
	}
	if app := vappOf(types.ManagedObjectReference{Type: "VirtualApp", Value: string(m[1])}); app != nil {
		updateVApp(app, &req.ConfigSpec, false)
	}
}

// afterCreateChildVM links a new VM to its vApp.
func afterCreateChildVM(req *types.CreateChildVM_Task, vmRef types.ManagedObjectReference) {
	app := vappOf(req.This)
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if app == nil || !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		parent := app.Self
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "parentVApp", Val: &parent}})
	})
	yes, no := true, false
	entity := types.VAppEntityConfigInfo{
		Key: &vmRef, Tag: req.Config.Name, StartOrder: 1, StartDelay: 120, WaitingForGuest: &no,
		StartAction: "powerOn", StopDelay: 120, StopAction: "powerOff", DestroyWithParent: &yes,
	}
	updateVApp(app, &types.VAppConfigSpec{EntityConfig: []types.VAppEntityConfigInfo{entity}}, false)
}
