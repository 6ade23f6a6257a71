package main

// A NIC backed by an opaque network (NSX) makes the simulator append an empty
// reference to the VM's "network" list, which clients cannot decode (pyVmomi
// fails on the whole property). We replace such entries with the opaque
// network the NIC names, as vCenter lists it.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// opaqueNetworks maps opaque network ids to their references.
func opaqueNetworks() map[string]types.ManagedObjectReference {
	out := map[string]types.ManagedObjectReference{}
	for _, e := range simulator.Map.All("OpaqueNetwork") {
		if n, ok := e.(*mo.OpaqueNetwork); ok {
			if s, ok := n.Summary.(*types.OpaqueNetworkSummary); ok {
				out[s.OpaqueNetworkId] = n.Self
			}
		}
	}
	return out
}

// fixVMNetworks repairs every VM's network list (see above) and NIC address types.
func fixVMNetworks() {
	opaque := opaqueNetworks()
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			assignAddressTypes(vm)
			broken := false
			var fixed []types.ManagedObjectReference
			seen := map[types.ManagedObjectReference]bool{}
			for _, ref := range vm.Network {
				if ref.Type == "" || ref.Value == "" {
					broken = true
					continue
				}
				seen[ref] = true
				fixed = append(fixed, ref)
			}
			if !broken || vm.Config == nil {
				return
			}
			for _, dev := range vm.Config.Hardware.Device {
				nic, ok := dev.(types.BaseVirtualEthernetCard)
				if !ok {
					continue
				}
				b, ok := nic.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardOpaqueNetworkBackingInfo)
				if !ok {
					continue
				}
				if ref, ok := opaque[b.OpaqueNetworkId]; ok && !seen[ref] {
					seen[ref] = true
					fixed = append(fixed, ref)
				}
			}
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "network", Val: fixed}})
		})
	}
}

// fixDatacenterNetworks makes each datacenter's "network" list what vCenter
// shows: the model lists its distributed port group twice and leaves its
// opaque networks out.
func fixDatacenterNetworks() {
	for _, e := range simulator.Map.All("Datacenter") {
		dc, ok := e.(*simulator.Datacenter)
		if !ok {
			continue
		}
		var opaque []types.ManagedObjectReference
		for _, o := range simulator.Map.All("OpaqueNetwork") {
			if n, ok := o.(*mo.OpaqueNetwork); ok && n.Parent != nil && *n.Parent == dc.NetworkFolder {
				opaque = append(opaque, n.Self)
			}
		}
		simulator.Map.WithLock(dc, func() {
			seen := map[types.ManagedObjectReference]bool{}
			var fixed []types.ManagedObjectReference
			for _, ref := range append(append([]types.ManagedObjectReference(nil), dc.Network...), opaque...) {
				if !seen[ref] {
					seen[ref] = true
					fixed = append(fixed, ref)
				}
			}
			simulator.Map.Update(dc, []types.PropertyChange{{Name: "network", Val: fixed}})
		})
	}
}

// assignAddressTypes marks MAC addresses the simulator generated as
// "assigned" (by vCenter), as vCenter does; the simulator leaves
// addressType empty, and a restore decides by it whether a MAC is the
// VM's own ("manual") or may be regenerated.
func assignAddressTypes(vm *simulator.VirtualMachine) {
	if vm.Config == nil {
		return
	}
	for _, dev := range vm.Config.Hardware.Device {
		if nic, ok := dev.(types.BaseVirtualEthernetCard); ok {
			card := nic.GetVirtualEthernetCard()
			if card.AddressType == "" && card.MacAddress != "" {
				card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
			}
		}
	}
}
