package vrrp

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// logicTests are the tests of the instance's logic over the fake link,
// which must pass as any user.
var logicTests = []string{
	"TestTrackingPriority", "TestGARPSchedule", "TestGARPOnceAndNA", "TestFaults", "TestFaultUnicastSrcLate",
	"TestForeignVIPStays", "TestPreemptDelay", "TestSyncGroupInstances", "TestVMACOverFakeLink",
	"TestRunAdvertToVIP", "TestRunLeavesNoGoroutine", "TestReadLoopBacksOffAndStops",
	"TestMalformedAdvertsAreDroppedAndCounted", "TestMachine", "TestGroupReports", "TestKeepalivedGolden",
	"TestRunWaitsForItsGoroutines", "TestLinkEventsWakeTheInstance", "TestRunShutdownAndNotify",
	"TestReannounceOnTwoMasters", "TestNewFaultsFirst", "TestVIPDefenceOverFakeLink", "TestVIPDefenceYieldsToAdverts",
	"TestClaimWatch", "TestVIPDefenceThroughRun", "TestAdvertSockets", "TestOwnAdvertsDropped", "TestNewIndexNewSocket", "TestVMACSocketReplaced",
}

// The package's tests run as a user who is not root: the test binary,
// built here as root, runs as nobody with CI unset. The instance's logic
// tests pass; the privileged ones skip; TestMain builds nothing (it
// would need root's build cache).
func TestTestsRunAsNobody(t *testing.T) {
	netnstest.Require(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		netnstest.SkipOrFail(t, "setpriv (util-linux) is needed to run as nobody: %v", err)
	}
	// A directory nobody can read: t.TempDir's are root's alone.
	dir, err := os.MkdirTemp("", "halb-vrrp-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "vrrp.test")
	if out, err := exec.Command("go", "test", "-c", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build the test binary: %v\n%s", err, out)
	}
	// The codec's golden vectors are read from testdata, relative to the
	// working directory.
	if err := os.CopyFS(filepath.Join(dir, "testdata"), os.DirFS("testdata")); err != nil {
		t.Fatal(err)
	}
	if err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, 0o755)
	}); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
		bin, "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Dir = dir
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CI=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	out, err := cmd.CombinedOutput()
	log := string(out)
	if err != nil {
		t.Fatalf("the tests as nobody: %v\n%s", err, log)
	}
	for _, name := range logicTests {
		if !strings.Contains(log, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass as nobody", name)
		}
	}
	// The privileged tests skip, as a user who is not root (euid 65534).
	if !strings.Contains(log, "--- SKIP: TestVIPSetAddRemove ") || !strings.Contains(log, "needs root (euid is 65534)") {
		t.Errorf("the privileged tests did not skip as nobody")
	}
	if t.Failed() {
		t.Logf("output as nobody:\n%s", log)
	}
	t.Logf("as nobody: %d passed, %d skipped", strings.Count(log, "--- PASS: "), strings.Count(log, "--- SKIP: "))
}
