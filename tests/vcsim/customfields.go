package main

// Custom attributes. The simulator's SetField (and so setCustomValue) appends
// a value each time, so an entity ends up with several values for one field,
// and a VM's summary.customValue stays empty. vCenter keeps one value per
// field and mirrors a VM's values in its summary; so do we, after each call.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// lastPerKey keeps the last value of each field key, in first-seen order.
func lastPerKey(values []types.BaseCustomFieldValue) []types.BaseCustomFieldValue {
	index := map[int32]int{}
	var out []types.BaseCustomFieldValue
	for _, v := range values {
		key := v.GetCustomFieldValue().Key
		if i, ok := index[key]; ok {
			out[i] = v
			continue
		}
		index[key] = len(out)
		out = append(out, v)
	}
	return out
}

// fixCustomValues applies the above to one entity.
func fixCustomValues(ref types.ManagedObjectReference) {
	obj := simulator.Map.Get(ref)
	e, ok := obj.(mo.Entity)
	if !ok {
		return
	}
	simulator.Map.WithLock(obj, func() {
		me := e.Entity()
		me.CustomValue = lastPerKey(me.CustomValue)
		me.Value = lastPerKey(me.Value)
		changes := []types.PropertyChange{
			{Name: "customValue", Val: me.CustomValue},
			{Name: "value", Val: me.Value},
		}
		if vm, ok := obj.(*simulator.VirtualMachine); ok {
			vm.Summary.CustomValue = me.CustomValue
			changes = append(changes, types.PropertyChange{Name: "summary.customValue", Val: me.CustomValue})
		}
		simulator.Map.Update(obj, changes)
	})
}
