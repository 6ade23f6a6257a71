package main

// Changed-block tracking of first-class disks (vStorage objects), which the
// simulator lacks; added by repofs, with the scheme of cbt.go:
//
//   - SetVStorageObjectControlFlags / ClearVStorageObjectControlFlags with
//     "enableChangedBlockTracking" switch tracking on and off (answered here;
//     RetrieveVStorageObject then shows changedBlockTrackingEnabled);
//   - VStorageObjectCreateSnapshot_Task issues the disk's change id and
//     remembers it for the new snapshot (DeleteSnapshot_Task forgets it);
//   - RetrieveSnapshotDetails answers the snapshot's path and change id;
//   - VStorageObjectManager.QueryChangedDiskAreas answers as for VMs.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

const cbtControlFlag = "enableChangedBlockTracking"

type fcdState struct {
	mu        sync.Mutex
	tracked   map[string]bool   // disk id -> tracking on
	snapshots map[string]string // disk id + "/" + snapshot id -> change id ("" without tracking)
}

var fcds = &fcdState{tracked: map[string]bool{}, snapshots: map[string]string{}}

func (s *fcdState) isTracked(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tracked[id]
}

func (s *fcdState) setTracked(id string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tracked[id] = on
}

func (s *fcdState) snapshot(id, snap string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changeID, ok := s.snapshots[id+"/"+snap]
	return changeID, ok
}

func (s *fcdState) setSnapshot(id, snap, changeID string, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if known {
		s.snapshots[id+"/"+snap] = changeID
	} else {
		delete(s.snapshots, id+"/"+snap)
	}
}

// fcdObject looks a first-class disk up through the simulator's own manager.
func fcdObject(manager, datastore types.ManagedObjectReference, id types.ID) (*types.VStorageObject, *cbtFault) {
	m, ok := simulator.Map.Get(manager).(*simulator.VcenterVStorageObjectManager)
	if !ok {
		return nil, &cbtFault{kind: "ManagedObjectNotFound", message: "managed object not found: " + manager.String(), obj: &manager}
	}
	if _, ok := simulator.Map.Get(datastore).(*simulator.Datastore); !ok {
		return nil, invalidArgument("datastore", "no such datastore: "+datastore.String())
	}
	ctx := &simulator.Context{Map: simulator.Map, Context: context.Background()}
	res, ok := m.RetrieveVStorageObject(ctx, &types.RetrieveVStorageObject{This: manager, Id: id, Datastore: datastore}).(*methods.RetrieveVStorageObjectBody)
	if !ok || res.Res == nil {
		return nil, &cbtFault{kind: "NotFound", message: fmt.Sprintf("no first-class disk %s on %s", id.Id, datastore.Value)}
	}
	return &res.Res.Returnval, nil
}

func fcdFile(obj *types.VStorageObject) string {
	if b, ok := obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo); ok {
		return b.FilePath
	}
	return ""
}

// setControlFlags answers Set/ClearVStorageObjectControlFlags.
func setControlFlags(this, datastore types.ManagedObjectReference, id types.ID, flags []string, on bool) *cbtFault {
	if _, fault := fcdObject(this, datastore, id); fault != nil {
		return fault
	}
	for _, f := range flags {
		if f != cbtControlFlag {
			continue
		}
		if on && !fcds.isTracked(id.Id) {
			obj, _ := fcdObject(this, datastore, id)
			resetTracking(fcdFile(obj)) // switched on again: earlier change ids no longer count
		}
		fcds.setTracked(id.Id, on)
	}
	return nil
}

// beforeFCDSnapshot issues the change id a snapshot of the disk will carry.
func beforeFCDSnapshot(req *types.VStorageObjectCreateSnapshot_Task) string {
	if !fcds.isTracked(req.Id.Id) {
		return ""
	}
	obj, fault := fcdObject(req.This, req.Datastore, req.Id)
	if fault != nil {
		return ""
	}
	p, err := localPath(fcdFile(obj))
	if err != nil {
		return ""
	}
	changeID, err := issueChangeID(p)
	if err != nil {
		return ""
	}
	return changeID
}

// snapshotDetails answers RetrieveSnapshotDetails.
func snapshotDetails(req *types.RetrieveSnapshotDetails) (*types.VStorageObjectSnapshotDetails, *cbtFault) {
	obj, fault := fcdObject(req.This, req.Datastore, req.Id)
	if fault != nil {
		return nil, fault
	}
	changeID, ok := fcds.snapshot(req.Id.Id, req.SnapshotId.Id)
	if !ok {
		return nil, &cbtFault{kind: "NotFound", message: fmt.Sprintf("no snapshot %s of disk %s", req.SnapshotId.Id, req.Id.Id)}
	}
	return &types.VStorageObjectSnapshotDetails{Path: fcdFile(obj), ChangedBlockTrackingId: changeID}, nil
}

// fcdChangedAreas answers VStorageObjectManager.QueryChangedDiskAreas.
func fcdChangedAreas(req *types.VstorageObjectVCenterQueryChangedDiskAreas) (*types.DiskChangeInfo, *cbtFault) {
	obj, fault := fcdObject(req.This, req.Datastore, req.Id)
	if fault != nil {
		return nil, fault
	}
	snapChangeID, ok := fcds.snapshot(req.Id.Id, req.SnapshotId.Id)
	if !ok {
		return nil, invalidArgument("snapshotId", fmt.Sprintf("no snapshot %s of disk %s", req.SnapshotId.Id, req.Id.Id))
	}
	return changedAreas(fcdFile(obj), obj.Config.CapacityInMB*1024*1024, snapChangeID, req.StartOffset, req.ChangeId)
}

var fcdTrackingOff = []byte("<changedBlockTrackingEnabled>false</changedBlockTrackingEnabled>")

// markTracked shows tracking in a RetrieveVStorageObject answer for a tracked disk.
func markTracked(body []byte, id string) []byte {
	if !fcds.isTracked(id) {
		return body
	}
	return []byte(strings.Replace(string(body), string(fcdTrackingOff),
		"<changedBlockTrackingEnabled>true</changedBlockTrackingEnabled>", 1))
}

func writeEmptyResponse(w http.ResponseWriter, method string) {
	writeSOAP(w, http.StatusOK, fmt.Sprintf(`<%sResponse xmlns="urn:vim25"></%sResponse>`, method, method))
}

func writeSnapshotDetails(w http.ResponseWriter, d *types.VStorageObjectSnapshotDetails) {
	body := `<RetrieveSnapshotDetailsResponse xmlns="urn:vim25"><returnval>`
	if d.Path != "" {
		body += "<path>" + escape(d.Path) + "</path>"
	}
	if d.ChangedBlockTrackingId != "" {
		body += "<changedBlockTrackingId>" + escape(d.ChangedBlockTrackingId) + "</changedBlockTrackingId>"
	}
	writeSOAP(w, http.StatusOK, body+`</returnval></RetrieveSnapshotDetailsResponse>`)
}
