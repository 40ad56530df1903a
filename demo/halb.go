package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// The configuration of each balancer: one VRRP instance that holds the
// VIP, and one DR service on it with http health checks. The timers are
// short so that the demo shows failover and draining within seconds.
var configTemplate = template.Must(template.New("halb.yaml").Parse(`# {{.Name}} of the halb demo; written by demo/halb.go
log: {level: info}
control:
  socket: {{.Dir}}/{{.Name}}.sock   # halb status -s {{.Dir}}/{{.Name}}.sock
  metrics: ""
datapath:
  mode: xdp
  interfaces: [eth0]
  xdp_mode: native
  bpffs: {{.Dir}}/bpffs/{{.Name}}   # each node pins its own
vrrp:
  instances:
    - name: VI_DEMO
      interface: eth0
      vrid: 51
      version: 3
      priority: {{.Priority}}
      advert_interval: 200ms        # the Backup takes over ~0.7s after the last advert
      virtual_ips: [{{.VIP}}/24]
services:
  - name: web
    vip: {{.VIP}}
    port: 80
    protocol: tcp
    scheduler: mh
    forward: dr
    backends:
{{- range .Backends}}
      - {address: {{.}}, port: 80}
{{- end}}
    health_check:
      type: http
      path: /healthz
      expect_status: [200]
      interval: 500ms
      timeout: 400ms
      rise: 2
      fall: 2
`))

// node is one halb process on a balancer host.
type node struct {
	*host
	priority int
	config   string
	socket   string
	bpffs    string
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
}

func (n *node) writeConfig(dir string, vip string, backends []string) error {
	n.config = filepath.Join(dir, n.name+".yaml")
	n.socket = filepath.Join(dir, n.name+".sock")
	n.bpffs = filepath.Join(dir, "bpffs", n.name)
	var buf bytes.Buffer
	err := configTemplate.Execute(&buf, map[string]any{
		"Name": n.name, "Dir": dir, "Priority": n.priority, "VIP": vip, "Backends": backends,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(n.config, buf.Bytes(), 0o600)
}

// start runs `halb run --cleanup` in the node's namespace: on SIGTERM it
// removes its VIP and everything it attached and pinned. Its log goes to
// a file beside the config; the lines about VRRP transitions and backend
// health are shown as they come.
func (n *node) start(halb string, out io.Writer) error {
	logFile, err := os.Create(strings.TrimSuffix(n.config, ".yaml") + ".log")
	if err != nil {
		return err
	}
	n.cmd = exec.Command(halb, "run", "--cleanup", "-c", n.config)
	// Its own process group, so that a Ctrl-C reaches the demo alone and
	// the demo stops the nodes in order; and killed if the demo dies
	// (strictly: if the thread that forked it ends, which happens with
	// the process, or earlier only for a thread internal/nsthread could
	// not bring back from the namespace).
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := n.cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return err
	}
	if err := n.spawn(n.cmd); err != nil {
		logFile.Close()
		return fmt.Errorf("start halb on %s: %w", n.name, err)
	}
	n.done = make(chan struct{})
	go func() {
		defer close(n.done)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if shown(line) {
				fmt.Fprintf(out, "         %s halb: %s\n", n.name, withoutTime(line))
			}
		}
		_ = n.cmd.Wait()
	}()
	return nil
}

// shown picks the log lines a newcomer should see.
func shown(line string) bool {
	for _, msg := range []string{"msg=transition", "msg=\"backend health\"", "level=ERROR", "level=WARN"} {
		if strings.Contains(line, msg) {
			return true
		}
	}
	return false
}

func withoutTime(line string) string {
	if strings.HasPrefix(line, "time=") {
		if _, rest, ok := strings.Cut(line, " "); ok {
			return rest
		}
	}
	return line
}

// exited reports whether the halb process has ended.
func (n *node) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// kill ends halb at once, without a goodbye advert: what a crash or a
// power cut does.
func (n *node) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// stop asks halb to stop (SIGTERM), and kills it if it has not after
// wait. It reports whether halb stopped by itself.
func (n *node) stop(wait time.Duration) bool {
	if n.cmd == nil || n.cmd.Process == nil {
		return true
	}
	if n.exited() {
		return true
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		return n.cmd.ProcessState != nil && n.cmd.ProcessState.Success()
	case <-time.After(wait):
		n.kill()
		return false
	}
}

// status is what `halb status --json` says, the parts the demo reads.
type status struct {
	Instances []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"instances"`
	Services []struct {
		Backends []struct {
			Backend string `json:"backend"`
			Live    bool   `json:"live"`
		} `json:"backends"`
	} `json:"services"`
}

// state is the VRRP state of the node's instance.
func (s status) state() string {
	if len(s.Instances) == 0 {
		return ""
	}
	return s.Instances[0].State
}

// live lists the backends that take new flows in the node's data path.
func (s status) live() []string {
	var l []string
	for _, svc := range s.Services {
		for _, b := range svc.Backends {
			if b.Live {
				l = append(l, strings.TrimSuffix(b.Backend, ":80"))
			}
		}
	}
	return l
}

// status asks the node with `halb status --json`.
func (n *node) status(ctx context.Context, halb string) (status, error) {
	var st status
	out, err := exec.CommandContext(ctx, halb, "status", "--json", "-s", n.socket).Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

// statusTable is `halb status`, as a person would type it.
func (n *node) statusTable(ctx context.Context, halb string) string {
	out, err := exec.CommandContext(ctx, halb, "status", "-s", n.socket).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("halb status on %s: %v\n%s", n.name, err, out)
	}
	return string(out)
}
