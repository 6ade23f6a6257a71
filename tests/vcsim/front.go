package main

// frontHandler sits in front of the simulator's HTTP handler. It refuses
// vAPI (/rest) logins with wrong credentials, answers empty vAPI listings as
// vCenter does, reads the SOAP method of each /sdk request and
//
//   - answers QueryChangedDiskAreas itself (the simulator lacks it), for
//     VMs and first-class disks (cbt.go, fcd.go);
//   - translates CreateSnapshotEx_Task (missing too) into CreateSnapshot_Task;
//   - before a snapshot, issues change ids; after it, detaches the snapshot's
//     config from the VM's;
//   - after calls that create or resize disks, gives every disk its files
//     and every VM a .vmx and an .nvram with content;
//   - serves datastore files (/folder) only to logged-in clients;
//   - lets RegisterVM_Task register a .vmx without .nvram and vmware.log;
//   - on /pbm: takes the session from the SOAP header, and answers which
//     storage profiles VMs and disks have (pbm.go);
//   - keeps one value per custom attribute (customfields.go);
//   - keeps all of a vApp's config, answers UpdateVAppConfig, links child
//     VMs to their vApp (vapp.go).
//
// Everything else passes through untouched. The simulator is used
// in-process (simulator.Map), never modified.

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// diskMethods may create, copy or grow virtual disks.
var diskMethods = map[string]bool{
	"CreateVM_Task":          true,
	"ReconfigVM_Task":        true,
	"RegisterVM_Task":        true,
	"CreateChildVM_Task":     true,
	"CloneVM_Task":           true,
	"RelocateVM_Task":        true,
	"CopyVirtualDisk_Task":   true,
	"CreateVirtualDisk_Task": true,
	"MoveVirtualDisk_Task":   true,
	"CreateDisk_Task":        true,
	"AttachDisk_Task":        true,
	"ImportVApp":             true,
	"HttpNfcLeaseComplete":   true,
}

type frontHandler struct {
	next http.Handler
	// user and password are what vAPI (/rest) logins are checked against: the
	// vAPI simulator accepts any non-empty user and password.
	user, password string
	// mu serializes our own bookkeeping (disk files, change ids, snapshots).
	mu sync.Mutex
}

func (h *frontHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if user, password, ok := r.BasicAuth(); ok && (user != h.user || password != h.password) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/folder/") {
		// vCenter serves datastore files to a logged-in session (or basic
		// auth, checked above); the simulator serves them to anyone.
		if _, _, basic := r.BasicAuth(); !basic && !h.authenticated(r) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.next.ServeHTTP(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/rest/") {
		h.serveVAPI(w, r)
		return
	}
	if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/pbm") {
		h.servePBM(w, r)
		return
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
		h.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		h.next.ServeHTTP(w, r) // the simulator answers with its own fault
		return
	}

	switch req := method.Body.(type) {
	case *types.QueryChangedDiskAreas:
		h.answer(w, r, method.Name, func() *cbtFault {
			info, fault := queryChangedDiskAreas(req)
			if fault == nil {
				writeDiskChangeInfo(w, method.Name, info)
			}
			return fault
		})
	case *types.VstorageObjectVCenterQueryChangedDiskAreas:
		h.answer(w, r, method.Name, func() *cbtFault {
			info, fault := fcdChangedAreas(req)
			if fault == nil {
				writeDiskChangeInfo(w, method.Name, info)
			}
			return fault
		})
	case *types.SetVStorageObjectControlFlags:
		h.answer(w, r, method.Name, func() *cbtFault {
			fault := setControlFlags(req.This, req.Datastore, req.Id, req.ControlFlags, true)
			if fault == nil {
				writeEmptyResponse(w, method.Name)
			}
			return fault
		})
	case *types.ClearVStorageObjectControlFlags:
		h.answer(w, r, method.Name, func() *cbtFault {
			fault := setControlFlags(req.This, req.Datastore, req.Id, req.ControlFlags, false)
			if fault == nil {
				writeEmptyResponse(w, method.Name)
			}
			return fault
		})
	case *types.RetrieveSnapshotDetails:
		h.answer(w, r, method.Name, func() *cbtFault {
			details, fault := snapshotDetails(req)
			if fault == nil {
				writeSnapshotDetails(w, details)
			}
			return fault
		})
	case *types.RetrieveVStorageObject:
		rec := h.forward(r, nil, method.Name)
		copyResponseBody(w, rec, markTracked(rec.Body.Bytes(), req.Id.Id))
	case *types.VStorageObjectCreateSnapshot_Task:
		if !h.authenticated(r) {
			copyResponse(w, h.forward(r, nil, method.Name), "", "")
			return
		}
		h.mu.Lock()
		changeID := beforeFCDSnapshot(req)
		rec := h.forward(r, nil, method.Name)
		if task := finishedTask(rec); task != nil && task.Info.State == types.TaskInfoStateSuccess {
			if id, ok := task.Info.Result.(*types.ID); ok && id != nil {
				fcds.setSnapshot(req.Id.Id, id.Id, changeID, true)
			}
		}
		h.mu.Unlock()
		copyResponse(w, rec, "", "")
	case *types.DeleteSnapshot_Task:
		rec := h.forward(r, nil, method.Name)
		if task := finishedTask(rec); task != nil && task.Info.State == types.TaskInfoStateSuccess {
			fcds.setSnapshot(req.Id.Id, req.SnapshotId.Id, "", false)
		}
		copyResponse(w, rec, "", "")
	case *types.RemoveAllSnapshots_Task:
		rec := h.forward(r, nil, method.Name)
		if vm := vmByRef(req.This); vm != nil {
			if task := finishedTask(rec); task != nil && task.Info.State == types.TaskInfoStateSuccess {
				h.mu.Lock()
				dropFrozen(vm, "*")
				h.mu.Unlock()
			}
		}
		copyResponse(w, rec, "", "")
	case *types.ConsolidateVMDisks_Task:
		vm := vmByRef(req.This)
		if vm == nil || !h.authenticated(r) {
			copyResponse(w, h.forward(r, nil, method.Name), "", "")
			return
		}
		ref := consolidateTask(vm)
		writeSOAP(w, http.StatusOK, fmt.Sprintf(`<ConsolidateVMDisks_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></ConsolidateVMDisks_TaskResponse>`, escape(ref.Value)))
	case *types.CreateSnapshotEx_Task:
		h.snapshot(w, r, req.This, req.QuiesceSpec != nil, createSnapshotBody(req), "CreateSnapshotEx_Task")
	case *types.CreateSnapshot_Task:
		h.snapshot(w, r, req.This, req.Quiesce, nil, "")
	case *types.SetField:
		rec := h.forward(r, nil, method.Name)
		if rec.Code == http.StatusOK {
			fixCustomValues(req.Entity)
		}
		copyResponse(w, rec, "", "")
	case *types.SetCustomValue:
		rec := h.forward(r, nil, method.Name)
		if rec.Code == http.StatusOK {
			fixCustomValues(req.This)
		}
		copyResponse(w, rec, "", "")
	case *types.CreateVApp:
		rec := h.forward(r, nil, method.Name)
		if rec.Code == http.StatusOK {
			h.mu.Lock()
			afterCreateVApp(req, rec.Body.Bytes())
			h.mu.Unlock()
		}
		copyResponse(w, rec, "", "")
	case *types.UpdateVAppConfig:
		app := vappOf(req.This)
		if app == nil || !h.authenticated(r) {
			copyResponse(w, h.forward(r, nil, method.Name), "", "") // the simulator's fault
			return
		}
		h.mu.Lock()
		updateVApp(app, &req.Spec, true)
		h.mu.Unlock()
		writeSOAP(w, http.StatusOK, `<UpdateVAppConfigResponse xmlns="urn:vim25"></UpdateVAppConfigResponse>`)
	default:
		if method.This.Type == "VirtualMachineSnapshot" && strings.HasSuffix(method.Name, "_Task") {
			h.snapshotTask(w, r, method)
			return
		}
		if !diskMethods[method.Name] {
			copyResponse(w, h.forward(r, nil, method.Name), "", "")
			return
		}
		if req, ok := method.Body.(*types.RegisterVM_Task); ok && h.authenticated(r) {
			prepareRegister(req)
		}
		var disksBefore []int32
		trackingBefore := false
		if req, ok := method.Body.(*types.ReconfigVM_Task); ok {
			disksBefore = vmDiskKeys(req.This)
			trackingBefore = trackingOn(req.This)
			on := req.Spec.ChangeTrackingEnabled
			if vm := vmByRef(req.This); vm != nil && on != nil && *on && !trackingBefore && h.authenticated(r) {
				if why := cannotTrack(vm); why != "" { // harsh.go
					ref := refusedTask(vm, "reconfigVM", why)
					writeSOAP(w, http.StatusOK, fmt.Sprintf(`<ReconfigVM_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></ReconfigVM_TaskResponse>`, escape(ref.Value)))
					return
				}
			}
		}
		rec := h.forward(r, nil, method.Name)
		if task := finishedTask(rec); task != nil && task.Info.State == types.TaskInfoStateSuccess {
			h.mu.Lock()
			h.afterDiskCall(method.Body, task.Info.Result)
			switch req := method.Body.(type) {
			case *types.CreateVM_Task:
				if vm, ok := task.Info.Result.(types.ManagedObjectReference); ok {
					recordProfiles(vm, &req.Config, nil)
					applyVMVAppConfig(vm, &req.Config)
				}
			case *types.CreateChildVM_Task:
				if vm, ok := task.Info.Result.(types.ManagedObjectReference); ok {
					recordProfiles(vm, &req.Config, nil)
					applyVMVAppConfig(vm, &req.Config)
					afterCreateChildVM(req, vm)
				}
			case *types.ReconfigVM_Task:
				recordProfiles(req.This, &req.Spec, disksBefore)
				applyVMVAppConfig(req.This, &req.Spec)
				applyDiskEncryption(req.This, &req.Spec) // harsh.go
				afterTrackingChange(req.This, trackingBefore)
				if !trackingBefore && trackingOn(req.This) {
					noteTrackingSwitchedOn(req.This) // harsh.go: KB 1020128
				}
			}
			h.mu.Unlock()
		} else if rec.Code == http.StatusOK && !strings.HasSuffix(method.Name, "_Task") {
			h.mu.Lock()
			h.afterDiskCall(method.Body, nil)
			h.mu.Unlock()
		}
		copyResponse(w, rec, "", "")
	}
}

// prepareRegister creates the .nvram and vmware.log that the simulator's
// RegisterVM_Task insists on opening (NotFound otherwise); vCenter needs only
// the .vmx and creates the rest.
func prepareRegister(req *types.RegisterVM_Task) {
	vmx, err := localPath(req.Path)
	if err != nil || filepath.Ext(vmx) != ".vmx" {
		return
	}
	if _, err := os.Stat(vmx); err != nil {
		return // NotFound, from the simulator
	}
	name := req.Name
	if name == "" {
		name = filepath.Base(filepath.Dir(vmx))
	}
	for _, p := range []string{filepath.Join(filepath.Dir(vmx), name+".nvram"), filepath.Join(filepath.Dir(vmx), "vmware.log")} {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			log.Printf("register %s: %v", req.Path, err)
			continue
		}
		_ = f.Close()
	}
}

var taskReturnval = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// finishedTask is the task a recorded *_Task answer returned, if any. The
// simulator runs tasks before it answers, so its state is final.
func finishedTask(rec *httptest.ResponseRecorder) *simulator.Task {
	if rec.Code != http.StatusOK {
		return nil
	}
	m := taskReturnval.FindSubmatch(rec.Body.Bytes())
	if m == nil {
		return nil
	}
	task, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: string(m[1])}).(*simulator.Task)
	return task
}

var vapiNullList = regexp.MustCompile(`^\{"value":null\}\s*$`)

// serveVAPI passes vAPI calls to the simulator, which answers an empty list
// with {"value":null} where vCenter answers {"value":[]}: listings (GET, and
// the ~action=list* calls) get the empty list.
func (h *frontHandler) serveVAPI(w http.ResponseWriter, r *http.Request) {
	listing := r.Method == http.MethodGet || strings.HasPrefix(r.URL.Query().Get("~action"), "list")
	rec := h.forward(r, nil, "vAPI "+r.URL.Path)
	body := rec.Body.Bytes()
	if listing && rec.Code == http.StatusOK && vapiNullList.Match(body) {
		body = []byte(`{"value":[]}`)
	}
	copyResponseBody(w, rec, body)
}

// servePBM serves the storage-profile endpoint (see pbm.go).
func (h *frontHandler) servePBM(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if r.URL.Path == "/pbm/sdk" {
		r.URL.Path = "/pbm" // vCenter's path; the simulator serves PBM at /pbm only
	}
	pbmSessionCookie(r, body)
	method, err := simulator.UnmarshalBody(pbmTypeFunc, body)
	if err == nil && h.authenticated(r) && answerPBM(w, method.Body) {
		return
	}
	h.next.ServeHTTP(w, r)
}

// pbmTypeFunc finds PBM types, which are registered as "pbm:<name>".
func pbmTypeFunc(name string) (reflect.Type, bool) {
	if t, ok := types.TypeFunc()("pbm:" + name); ok {
		return t, true
	}
	return types.TypeFunc()(name)
}

// snapshot takes a snapshot with change ids (see cbt.go). body, if not nil,
// replaces the request's body; renamed is the method name the client called,
// when it was translated.
func (h *frontHandler) snapshot(w http.ResponseWriter, r *http.Request, vm types.ManagedObjectReference, quiesce bool, body []byte, renamed string) {
	if !h.authenticated(r) {
		h.next.ServeHTTP(w, r)
		return
	}
	if fault := templateSnapshotFault(vm); fault != nil { // harsh.go
		writeFault(w, fault)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	response := "CreateSnapshot_TaskResponse"
	if renamed != "" {
		response = renamed + "Response"
	}
	if task := injectedSnapshotFault(vm, quiesce); task != nil {
		writeSOAP(w, http.StatusOK, fmt.Sprintf(`<%s xmlns="urn:vim25"><returnval type="Task">%s</returnval></%s>`,
			response, escape(task.Value), response))
		return
	}
	before := currentSnapshot(vm)
	prepareSnapshot(vm)
	pending := freezeDisks(vm) // harsh.go: the state the snapshot keeps, taken before it exists
	rec := h.forward(r, body, "CreateSnapshot_Task")
	if after := currentSnapshot(vm); after != nil && (before == nil || *after != *before) {
		if err := detachSnapshotConfig(*after); err != nil {
			log.Printf("snapshot %s: %v", after, err)
		}
		pending.keep(*after)
	}
	pending.drop()
	copyResponse(w, rec, "CreateSnapshot_TaskResponse", response)
}

// snapshotTask forwards a task of a snapshot (RemoveSnapshot_Task,
// RevertToSnapshot_Task) and names the snapshot's VM as the task's entity, as
// vCenter does: the simulator names the snapshot, which is no ManagedEntity,
// and clients that read info.entity fail (pyVim's WaitForTask: TypeError).
func (h *frontHandler) snapshotTask(w http.ResponseWriter, r *http.Request, method *simulator.Method) {
	var vm *simulator.VirtualMachine
	if snap, ok := simulator.Map.Get(method.This).(*simulator.VirtualMachineSnapshot); ok {
		vm, _ = simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	}
	rec := h.forward(r, nil, method.Name)
	if task := finishedTask(rec); task != nil && vm != nil && task.Info.State == types.TaskInfoStateSuccess {
		// harsh.go: the disks follow the snapshot tree.
		h.mu.Lock()
		switch method.Name {
		case "RevertToSnapshot_Task":
			revertDisks(vm, method.This.Value)
			h.forward(r, revertEventBody(vm, method.This.Value), "PostEvent")
		case "RemoveSnapshot_Task":
			dropFrozen(vm, method.This.Value)
			if wantsConsolidationFault(vm) {
				setConsolidationNeeded(vm, true)
			}
		}
		h.mu.Unlock()
	}
	if task := finishedTask(rec); task != nil && vm != nil {
		var name string
		simulator.Map.WithLock(vm, func() { name = vm.Name })
		ref := vm.Self
		simulator.Map.WithLock(task, func() {
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.entity", Val: &ref},
				{Name: "info.entityName", Val: name},
			})
		})
	}
	copyResponse(w, rec, "", "")
}

// createSnapshotBody translates CreateSnapshotEx_Task into the simulator's CreateSnapshot_Task.
func createSnapshotBody(req *types.CreateSnapshotEx_Task) []byte {
	quiesce := req.QuiesceSpec != nil
	inner := fmt.Sprintf(`<CreateSnapshot_Task xmlns="urn:vim25"><_this type="%s">%s</_this>`+
		`<name>%s</name><description>%s</description><memory>%t</memory><quiesce>%t</quiesce></CreateSnapshot_Task>`,
		escape(req.This.Type), escape(req.This.Value), escape(req.Name), escape(req.Description), req.Memory, quiesce)
	return []byte(envelopeOpen + inner + envelopeClose)
}

// afterDiskCall gives every disk of the inventory its files, and those named
// by a VirtualDiskManager call too (they belong to no VM).
func (h *frontHandler) afterDiskCall(body interface{}, result types.AnyType) {
	switch req := body.(type) {
	case *types.CreateDisk_Task:
		// A first-class disk: the simulator makes empty files.
		if obj, ok := result.(*types.VStorageObject); ok && obj != nil {
			if b, ok := obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo); ok {
				ensureNamed(b.FilePath, obj.Config.CapacityInMB*1024*1024, "lsilogic")
			}
			recordDiskProfiles(obj.Config.Id.Id, req.Spec.Profile) // pbm.go
		}
	case *types.CreateVirtualDisk_Task:
		capacity, adapter := int64(0), "lsilogic"
		if spec, ok := req.Spec.(*types.FileBackedVirtualDiskSpec); ok {
			capacity = spec.CapacityKb * 1024
		}
		if spec, ok := req.Spec.(types.BaseVirtualDiskSpec); ok && spec.GetVirtualDiskSpec().AdapterType == "ide" {
			adapter = "ide"
		}
		ensureNamed(req.Name, capacity, adapter)
	case *types.CopyVirtualDisk_Task:
		capacity := int64(0)
		if src, err := localPath(req.SourceName); err == nil {
			if st, err := os.Stat(filepath.Join(filepath.Dir(src), flatName(src))); err == nil {
				capacity = st.Size()
			}
		}
		ensureNamed(req.DestName, capacity, "lsilogic")
	}
	ensureAllDisks()
	fixVMNetworks()
	ensureVMFiles()
}

func ensureNamed(datastorePath string, capacity int64, adapter string) {
	p, err := localPath(datastorePath)
	if err == nil {
		err = ensureDisk(p, capacity, adapter)
	}
	if err != nil {
		log.Printf("disk %s: %v", datastorePath, err)
	}
}

// forward runs the request through the simulator and records the answer.
// body, if not nil, replaces the request's body. A crash of the simulator's
// handler becomes an answer (see answerPanic) instead of a dropped connection.
func (h *frontHandler) forward(r *http.Request, body []byte, method string) (rec *httptest.ResponseRecorder) {
	if body != nil {
		r = r.Clone(r.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	}
	defer func() {
		if p := recover(); p != nil {
			rec = httptest.NewRecorder()
			answerPanic(rec, method, p)
		}
	}()
	rec = httptest.NewRecorder()
	h.next.ServeHTTP(rec, r)
	return rec
}

// answerPanic answers a call whose handler crashed. Reading an unset property
// with PropertyCollector.Fetch (what pyVmomi does for vm.snapshot on a VM
// without snapshots) indexes an empty slice there: answer "unset", as vCenter
// does. Anything else becomes a SystemError fault.
func answerPanic(w http.ResponseWriter, method string, p interface{}) {
	if method == "Fetch" {
		writeSOAP(w, http.StatusOK, `<FetchResponse xmlns="urn:vim25"></FetchResponse>`)
		return
	}
	log.Printf("%s: the simulator crashed: %v", method, p)
	writeFault(w, &cbtFault{kind: "SystemError", message: fmt.Sprintf("simulator crashed in %s: %v", method, p), field: fmt.Sprint(p)})
}

// authenticated asks the simulator whether the request's session is logged
// in, by sending it CurrentTime (which needs a session) with the same cookies.
func (h *frontHandler) authenticated(r *http.Request) bool {
	probe := []byte(envelopeOpen + `<CurrentTime xmlns="urn:vim25">` +
		`<_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>` + envelopeClose)
	req := r.Clone(r.Context())
	req.Method = http.MethodPost
	req.URL.Path, req.URL.RawQuery = "/sdk", ""
	return h.forward(req, probe, "CurrentTime").Code == http.StatusOK
}

// answer runs one of our own answers for a logged-in client: f writes the
// result, or returns the fault to send. Without a session the simulator
// answers (NotAuthenticated).
func (h *frontHandler) answer(w http.ResponseWriter, r *http.Request, method string, f func() *cbtFault) {
	if !h.authenticated(r) {
		copyResponse(w, h.forward(r, nil, method), "", "")
		return
	}
	h.mu.Lock()
	fault := f()
	h.mu.Unlock()
	if fault != nil {
		writeFault(w, fault)
	}
}

// copyResponse sends a recorded answer to the client, renaming the response
// element when the request was translated.
func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder, from, to string) {
	body := rec.Body.Bytes()
	if from != "" {
		body = bytes.ReplaceAll(body, []byte(from), []byte(to))
	}
	copyResponseBody(w, rec, body)
}

// copyResponseBody sends a recorded answer with another body.
func copyResponseBody(w http.ResponseWriter, rec *httptest.ResponseRecorder, body []byte) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}
