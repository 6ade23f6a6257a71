package main

// Storage profiles (PBM) as a backup and a restore see them. The simulator's
// PBM endpoint serves its profiles (at /pbm; we add vCenter's /pbm/sdk) but
//
//   - authenticates by the HTTP session cookie only, while pyVmomi (like
//     vCenter's own clients) sends the vim session as a SOAP header,
//     <vcSessionCookie>: we copy the header into the cookie;
//   - ignores the profiles a ConfigSpec assigns (vmProfile, and profile on a
//     device change) and answers PbmQueryAssociatedProfile(s) with nothing:
//     we record the assignments of CreateVM_Task, CreateChildVM_Task and
//     ReconfigVM_Task and answer those two queries from them.
//
// Entities are keyed as PBM names them: "vm-42" (objectType virtualMachine,
// the VM home) and "vm-42:2000" (objectType virtualDiskId, a disk's key); a
// first-class disk by its id (objectType virtualDiskUUID), whose profile
// CreateDisk_Task's VslmCreateSpec.profile sets (the simulator drops it too),
// stored under "fcd:<id>".

import (
	"bytes"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"

	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var sessionHeader = regexp.MustCompile(`<(?:\w+:)?vcSessionCookie[^>]*>([^<]+)</(?:\w+:)?vcSessionCookie>`)

// pbmSessionCookie gives a PBM request the session cookie its SOAP header names.
func pbmSessionCookie(r *http.Request, body []byte) {
	if _, err := r.Cookie("vmware_soap_session"); err == nil {
		return
	}
	if m := sessionHeader.FindSubmatch(body); m != nil {
		value := strings.Trim(strings.TrimSpace(string(m[1])), `"`)
		r.AddCookie(&http.Cookie{Name: "vmware_soap_session", Value: value})
	}
}

// profileStore holds the profile ids assigned to VM homes and disks.
type profileStore struct {
	mu  sync.Mutex
	ids map[string][]string
}

var profiles = &profileStore{ids: map[string][]string{}}

func (s *profileStore) set(key string, ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ids) == 0 {
		delete(s.ids, key)
		return
	}
	s.ids[key] = ids
}

func (s *profileStore) get(key string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ids[key]...)
}

// profileIDs reads a ConfigSpec's profile list; ok is false when the spec says nothing.
func profileIDs(specs []types.BaseVirtualMachineProfileSpec) (ids []string, ok bool) {
	if specs == nil {
		return nil, false
	}
	for _, p := range specs {
		if d, isDefined := p.(*types.VirtualMachineDefinedProfileSpec); isDefined {
			ids = append(ids, d.ProfileId)
		}
	}
	return ids, true // an empty profile spec removes the association
}

// vmDiskKeys lists the keys of a VM's disks, in device order.
func vmDiskKeys(vmRef types.ManagedObjectReference) []int32 {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return nil
	}
	var keys []int32
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, dev := range vm.Config.Hardware.Device {
			if d, ok := dev.(*types.VirtualDisk); ok {
				keys = append(keys, d.Key)
			}
		}
	})
	return keys
}

// recordProfiles notes the profiles of a ConfigSpec applied to vmRef; before
// holds the VM's disk keys before the call, to pair the spec's added disks
// (in order) with the keys the simulator gave them.
func recordProfiles(vmRef types.ManagedObjectReference, spec *types.VirtualMachineConfigSpec, before []int32) {
	if ids, ok := profileIDs(spec.VmProfile); ok {
		profiles.set(vmRef.Value, ids)
	}
	known := map[int32]bool{}
	for _, k := range before {
		known[k] = true
	}
	var added []int32
	for _, k := range vmDiskKeys(vmRef) {
		if !known[k] {
			added = append(added, k)
		}
	}
	for _, change := range spec.DeviceChange {
		c := change.GetVirtualDeviceConfigSpec()
		if _, disk := c.Device.(*types.VirtualDisk); !disk {
			continue
		}
		var key int32
		switch c.Operation {
		case types.VirtualDeviceConfigSpecOperationAdd:
			if len(added) == 0 {
				continue
			}
			key, added = added[0], added[1:]
		case types.VirtualDeviceConfigSpecOperationEdit:
			key = c.Device.GetVirtualDevice().Key
		case types.VirtualDeviceConfigSpecOperationRemove:
			profiles.set(fmt.Sprintf("%s:%d", vmRef.Value, c.Device.GetVirtualDevice().Key), nil)
			continue
		}
		if ids, ok := profileIDs(c.Profile); ok {
			profiles.set(fmt.Sprintf("%s:%d", vmRef.Value, key), ids)
		}
	}
}

// fcdPrefix marks the store's keys of first-class disks.
const fcdPrefix = "fcd:"

// recordDiskProfiles notes the profiles a first-class disk was created with.
func recordDiskProfiles(id string, specs []types.BaseVirtualMachineProfileSpec) {
	if ids, ok := profileIDs(specs); ok {
		profiles.set(fcdPrefix+id, ids)
	}
}

// storeKey is the store's key of a PBM entity.
func storeKey(ref pbmtypes.PbmServerObjectRef) string {
	if ref.ObjectType == string(pbmtypes.PbmObjectTypeVirtualDiskUUID) {
		return fcdPrefix + ref.Key
	}
	return ref.Key
}

// answerPBM answers the association queries; false leaves the call to the simulator.
func answerPBM(w http.ResponseWriter, body interface{}) bool {
	var out bytes.Buffer
	switch req := body.(type) {
	case *pbmtypes.PbmQueryAssociatedProfile:
		out.WriteString(`<PbmQueryAssociatedProfileResponse xmlns="urn:pbm">`)
		for _, id := range profiles.get(storeKey(req.Entity)) {
			fmt.Fprintf(&out, `<returnval><uniqueId>%s</uniqueId></returnval>`, escape(id))
		}
		out.WriteString(`</PbmQueryAssociatedProfileResponse>`)
	case *pbmtypes.PbmQueryAssociatedProfiles:
		out.WriteString(`<PbmQueryAssociatedProfilesResponse xmlns="urn:pbm">`)
		for _, e := range req.Entities {
			fmt.Fprintf(&out, `<returnval><object><objectType>%s</objectType><key>%s</key>`,
				escape(e.ObjectType), escape(e.Key))
			if e.ServerUuid != "" {
				fmt.Fprintf(&out, `<serverUuid>%s</serverUuid>`, escape(e.ServerUuid))
			}
			out.WriteString(`</object>`)
			for _, id := range profiles.get(storeKey(e)) {
				fmt.Fprintf(&out, `<profileId><uniqueId>%s</uniqueId></profileId>`, escape(id))
			}
			out.WriteString(`</returnval>`)
		}
		out.WriteString(`</PbmQueryAssociatedProfilesResponse>`)
	case *pbmtypes.PbmQueryAssociatedEntity:
		out.WriteString(`<PbmQueryAssociatedEntityResponse xmlns="urn:pbm">`)
		for _, key := range profiles.keysWith(req.Profile.UniqueId) {
			kind := "virtualMachine"
			if strings.HasPrefix(key, fcdPrefix) {
				kind, key = string(pbmtypes.PbmObjectTypeVirtualDiskUUID), strings.TrimPrefix(key, fcdPrefix)
			} else if strings.Contains(key, ":") {
				kind = "virtualDiskId"
			}
			if req.EntityType != "" && req.EntityType != kind {
				continue
			}
			fmt.Fprintf(&out, `<returnval><objectType>%s</objectType><key>%s</key></returnval>`, kind, escape(key))
		}
		out.WriteString(`</PbmQueryAssociatedEntityResponse>`)
	default:
		return false
	}
	writeSOAP(w, http.StatusOK, out.String())
	return true
}

func (s *profileStore) keysWith(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k, ids := range s.ids {
		for _, i := range ids {
			if i == id {
				keys = append(keys, k)
				break
			}
		}
	}
	sort.Strings(keys)
	return keys
}
