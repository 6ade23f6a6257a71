// Command vcsim is repofs' test vCenter: the govmomi simulator (Debian's
// golang-github-vmware-govmomi-dev 0.24.2) served on loopback over TLS, plus
// what the simulator lacks and a vSphere backup or restore depends on. All of
// that sits in an HTTP handler placed in front of the simulator's own
// (front.go); the simulator's code is not modified. docs/vcsim.md lists it;
// the main parts:
//
//   - disks with real files: a monolithicFlat descriptor and a sparse flat
//     extent of its capacity for every virtual disk (disks.go), which the VDDK
//     stand-in reads and writes;
//   - changed-block tracking, which the simulator does not have: change ids on
//     snapshots and QueryChangedDiskAreas answered from a log of the writes
//     beside each disk, for VMs (cbt.go) and first-class disks (fcd.go);
//   - .vmx and .nvram files with content (vmx.go), storage profiles (pbm.go),
//     vApp configs (vapp.go), networks (network.go), custom attributes
//     (customfields.go), snapshot fault injection (faults.go).
//
// Build (no modules, no downloads):
//
//	cd tests/vcsim && GO111MODULE=off GOPATH=/usr/share/gocode go build -o ../../build/vcsim .
//
// Once it listens it prints one line of JSON on stdout; it serves until
// SIGTERM or SIGINT (or, with -exit-on-stdin-eof, the end of stdin), then
// removes its datastore folders and exits 0.
package main

import (
	"crypto/sha1"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	_ "github.com/vmware/govmomi/pbm/simulator" // registers the /pbm endpoint (storage profiles)
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers /rest (tags, categories, content library)
)

// announcement is the single JSON line printed on stdout once the server listens.
type announcement struct {
	URL        string            `json:"url"`
	Server     string            `json:"server"`
	User       string            `json:"user"`
	Password   string            `json:"password"`
	Thumbprint string            `json:"thumbprint"`
	CertPEM    string            `json:"cert_pem"`
	Datacenter string            `json:"datacenter"`
	Datastores map[string]string `json:"datastores"`
	PID        int               `json:"pid"`
}

func main() {
	user := flag.String("user", "administrator@vsphere.local", "user name that may log in")
	password := flag.String("password", "repofs-vcsim", "password of -user")
	machines := flag.Int("vm", 2, "VMs per resource pool of the model (the cluster's and the standalone host's)")
	datastores := flag.Int("ds", 2, "local datastores (LocalDS_0, LocalDS_1, ...)")
	pageSize := flag.Int64("cbt-page-size", defaultCBTPageSize,
		"bytes of the disk covered by one QueryChangedDiskAreas answer")
	trace := flag.Bool("trace", false, "log SOAP traffic to stderr")
	freeze := flag.Bool("freeze-snapshots", true,
		"copy the disks at CreateSnapshot so that snapshots freeze data (costs a copy of each disk; off for benchmarks)")
	idle := flag.Duration("session-idle-timeout", 0,
		"expire sessions idle this long, as vCenter does after 30 minutes (0: never)")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false,
		"stop as on SIGTERM when stdin reaches end of file (the parent that holds its other end died)")
	flag.Parse()

	log.SetPrefix("vcsim: ")
	if *pageSize < cbtGranularity || *pageSize%cbtGranularity != 0 {
		log.Fatalf("-cbt-page-size must be a positive multiple of %d", cbtGranularity)
	}
	cbtPageSize = *pageSize
	simulator.Trace = *trace
	simulator.SessionIdleTimeout = *idle
	freezeSnapshots = *freeze

	// Signals are caught from the start: one that arrives while we set up (or
	// right after the JSON line) still stops us cleanly.
	stop := make(chan string, 2)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { stop <- (<-signals).String() }()

	model := simulator.VPX()
	// Advertise vSphere 6.7 (API urn:vim25/6.7) rather than the model's 6.5:
	// snapshots and changed-block queries of first-class disks exist from 6.7
	// on, and clients only call what the server's version offers. The
	// simulator itself does not look at versions.
	about := &model.ServiceContent.About
	about.Version, about.ApiVersion = "6.7.0", "6.7"
	about.FullName = "VMware vCenter Server 6.7.0 build-" + about.Build
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 2
	model.Host = 1          // one standalone host besides the cluster
	model.Portgroup = 1     // distributed switch DVS0 with port group DC0_DVPG0
	model.OpaqueNetwork = 1 // NSX-style opaque network DC0_NSX0
	model.Datastore = *datastores
	model.Machine = *machines
	if err := model.Create(); err != nil {
		model.Remove()
		log.Fatalf("creating the inventory: %v", err)
	}
	// From here on every way out goes through model.Remove, which deletes the
	// datastore folders.
	fail := func(format string, args ...interface{}) {
		model.Remove()
		log.Fatalf(format, args...)
	}

	tlsConfig, certPEM, certDER, err := selfSignedTLS()
	if err != nil {
		fail("certificate: %v", err)
	}
	model.Service.TLS = tlsConfig
	// Without a host the simulator advertises a non-loopback address; without
	// our own Userinfo it accepts any user and password.
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, *password)}
	model.Service.RegisterEndpoints = true

	// Give the disks and VMs the model created real files before anyone can connect.
	ensureAllDisks()
	fixDatacenterNetworks()
	fixVMNetworks()
	ensureVMFiles()

	server := model.Service.NewServer()
	// The simulator starts serving inside NewServer and offers no hook in
	// front of its mux, so the handler is swapped right after; no client can
	// have connected yet, as nobody knows the port before the line below.
	server.Config.Handler = &frontHandler{next: server.Config.Handler, user: *user, password: *password}

	host := server.URL.Host
	dsFolders := datastoreFolders()
	line := announcement{
		URL:        "https://" + host + "/sdk",
		Server:     host,
		User:       *user,
		Password:   *password,
		Thumbprint: thumbprint(certDER),
		CertPEM:    certPEM,
		Datacenter: "DC0",
		Datastores: dsFolders,
		PID:        os.Getpid(),
	}
	out, err := json.Marshal(line)
	if err != nil {
		fail("announcement: %v", err)
	}
	fmt.Println(string(out))

	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- "end of stdin"
		}()
	}
	log.Printf("%s: stopping", <-stop)

	// Close waits for requests in flight; a client blocked in WaitForUpdates
	// would hold it forever, so give up waiting after a few seconds.
	closed := make(chan struct{})
	go func() {
		server.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		log.Print("requests still in flight; exiting anyway")
	}
	model.Remove()
	os.Exit(0)
}

// thumbprint is the SHA-1 of the certificate's DER bytes as vSphere shows it:
// upper-case hex pairs separated by colons.
func thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// datastoreFolders maps each datastore's name to its local folder.
func datastoreFolders() map[string]string {
	folders := map[string]string{}
	for _, ds := range allDatastores() {
		folders[ds.Name] = dsFolder(ds)
	}
	return folders
}
