package reliability

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nobody is the uid (and gid) the foreign VMMs run as.
const nobody = 65534

// pagefetcher's Unix socket is a socket of mode 0600 owned by its user: a
// process of another uid cannot even connect to it (the directory is
// traversable here, so only the socket's own mode stops it), and the
// fetcher goes on waiting for its VMM, which then migrates normally.
func TestSocketModeKeepsOthersOut(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS)

	var st unix.Stat_t
	if err := unix.Lstat(e.socket, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o600 || int(st.Uid) != unix.Geteuid() {
		t.Errorf("%s: mode %#o, uid %d; want a socket of mode 0600 owned by uid %d", e.socket, st.Mode, st.Uid, unix.Geteuid())
	}

	intruder := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Image: "-", UID: nobody}, hostNS)
	res, code := workloadDone(t, intruder)
	if code == 0 || !strings.Contains(res.Error, "permission denied") {
		t.Errorf("a VMM of uid %d: exit code %d, error %q; want connect refused with permission denied", nobody, code, res.Error)
	}
	if f.Exited() {
		t.Fatalf("pagefetcher exited after a refused connection attempt")
	}
	w := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2}, hostNS)
	checkVerified(t, w)
	checkCompleted(t, f, 4<<8)
}

// --allow-uid: SO_PEERCRED must match. The foreign VMMs here keep file-system
// uid 0 for the connect (so the socket's mode lets them in) while their
// effective uid — what SO_PEERCRED reports — is nobody's: only --allow-uid
// stands between them and the fetcher.
func TestAllowUID(t *testing.T) {
	for _, tc := range []struct {
		name     string
		allow    int
		peerUID  int // 0: root
		accepted bool
	}{
		{name: "root-only-refuses-nobody", allow: 0, peerUID: nobody},
		{name: "nobody-only-refuses-root", allow: nobody, peerUID: 0},
		{name: "nobody-only-accepts-nobody", allow: nobody, peerUID: nobody, accepted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 4<<20, defaultImage)
			_, ready := e.startServer("127.0.0.1:0", hostNS)
			f, _ := e.startFetcher(ready.Addr, hostNS, "--allow-uid", fmt.Sprint(tc.allow))
			w := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2, UID: tc.peerUID,
				FsuidRoot: tc.peerUID != 0, WaitHandler: 30 * time.Second}, hostNS)
			if tc.accepted {
				checkVerified(t, w)
				checkCompleted(t, f, 4<<8)
				if want := fmt.Sprintf("uid=%d", tc.peerUID); !strings.Contains(f.Stderr(), want) {
					t.Errorf("pagefetcher did not log the VMM's %s", want)
				}
				return
			}
			// Refused and logged; pagefetcher waits on for its VMM.
			want := fmt.Sprintf("uid %d is not allowed", tc.peerUID)
			if err := f.waitLog(want, 1, eventTimeout); err != nil {
				t.Fatalf("pagefetcher's stderr does not say %q: %v", want, err)
			}
			if f.Exited() {
				t.Fatalf("pagefetcher exited after refusing a VMM")
			}
			// The refused VMM got nothing: either its handshake failed
			// (the fetcher closed the connection before reading it), or it
			// went on and its reads wait for a handler that never took its
			// userfaultfd.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for !blockedInFault(w.Pid()) {
				select {
				case <-tick.C:
					continue
				case <-w.Done():
				}
				res, _ := workloadDone(t, w)
				if !strings.Contains(res.Error, "handshake") || res.Reads != 0 {
					t.Errorf("the refused VMM: %+v; want a failed handshake, or its reads blocked", res)
				}
				break
			}
			// The VMM of the allowed uid then migrates.
			good := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2, UID: tc.allow,
				FsuidRoot: tc.allow != 0}, hostNS)
			checkVerified(t, good)
			checkCompleted(t, f, 4<<8)
		})
	}
}
