package keepalived

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// render writes the converted configuration as halb YAML, in the order
// and with the comments a person reads it in: the data path, the
// instances, the sync groups, the services.

// writer builds the YAML text line by line.
type writer struct{ b strings.Builder }

func (w *writer) line(indent int, format string, args ...any) {
	w.b.WriteString(strings.Repeat(" ", indent))
	fmt.Fprintf(&w.b, format, args...)
	w.b.WriteByte('\n')
}

// comment writes text as # lines at indent.
func (w *writer) comment(indent int, text string) {
	w.line(indent, "# %s", text)
}

// kv writes key: value, with an end-of-line comment when note is set.
func (w *writer) kv(indent int, key, value, note string) {
	if note != "" {
		w.line(indent, "%s: %s  # %s", key, value, note)
		return
	}
	w.line(indent, "%s: %s", key, value)
}

func (c *converter) render() []byte {
	w := &writer{}
	w.comment(0, "Converted from keepalived's configuration by `halb import`; check it with `halb check -c FILE`.")
	if c.opt.ConfigID != "" {
		w.comment(0, fmt.Sprintf("@ lines were kept for config id %q.", c.opt.ConfigID))
	}
	c.renderDatapath(w)
	if len(c.instances) > 0 || len(c.groups) > 0 {
		w.line(0, "vrrp:")
	}
	if len(c.instances) > 0 {
		w.line(2, "instances:")
		for _, in := range c.instances {
			renderInstance(w, in)
		}
	}
	if len(c.groups) > 0 {
		w.line(2, "sync_groups:")
		for _, g := range c.groups {
			w.line(4, "- name: %s", yamlScalar(safeName(g.name)))
			members := make([]string, len(g.instances))
			for i, m := range g.instances {
				members[i] = safeName(m)
			}
			w.kv(6, "instances", flowList(members), "")
			for _, kv := range g.notify {
				w.kv(6, kv[0], kv[1], "")
			}
		}
	}
	if len(c.services) > 0 {
		w.line(0, "services:")
		for _, s := range c.services {
			renderService(w, s)
		}
	}
	return []byte(w.b.String())
}

// renderDatapath: keepalived balanced with IPVS on whatever interface the
// traffic came in on; halb's eBPF data path attaches to named
// interfaces, those of the instances that hold the services' VIPs.
func (c *converter) renderDatapath(w *writer) {
	if len(c.services) == 0 {
		return
	}
	w.line(0, "datapath:")
	// forward nat sees the backends' replies come back: the interfaces
	// toward the backends too, which are those of the other instances.
	nat := slices.ContainsFunc(c.services, func(s *service) bool { return s.forward == "nat" })
	var ifaces []string
	add := func(name string) {
		if !slices.Contains(ifaces, name) {
			ifaces = append(ifaces, name)
		}
	}
	vips := c.serviceVIPs()
	for _, in := range c.instances {
		if nat {
			add(in.iface)
		}
		for _, v := range slices.Concat(in.vips, in.excluded) {
			if vips[v.prefix[:strings.IndexByte(v.prefix, '/')]] {
				add(cmp.Or(v.iface, in.iface))
			}
		}
	}
	if len(ifaces) == 0 {
		w.comment(2, "keepalived balanced these services with IPVS, and no instance here holds their VIPs")
		w.comment(2, "to name the interfaces the eBPF data path would attach to: IPVS it stays")
		w.kv(2, "mode", "ipvs", "")
		return
	}
	w.comment(2, "keepalived balanced with IPVS; auto takes XDP (else tc) where the kernel allows, IPVS otherwise")
	w.kv(2, "mode", "auto", "")
	note := "where the services' VIPs live"
	if nat {
		note = "forward nat: every instance's interface, the backends' side included, and where the VIPs live"
	}
	w.kv(2, "interfaces", flowList(ifaces), note)
}

// serviceVIPs are the addresses the services are reached on.
func (c *converter) serviceVIPs() map[string]bool {
	vips := map[string]bool{}
	for _, s := range c.services {
		vips[s.vip] = true
		for _, l := range s.listen {
			if ap, err := netip.ParseAddrPort(l); err == nil {
				vips[ap.Addr().String()] = true
			}
		}
	}
	return vips
}

func renderInstance(w *writer, in *instance) {
	for _, cm := range in.comments {
		w.comment(4, cm)
	}
	w.line(4, "- name: %s", yamlScalar(safeName(in.name)))
	const ind = 6
	w.kv(ind, "interface", yamlScalar(in.iface), "")
	w.kv(ind, "vrid", strconv.Itoa(in.vrid), "")
	w.kv(ind, "version", strconv.Itoa(in.version), "")
	note := ""
	if in.priorityNote != "" {
		note = in.priorityNote + " (halb subtracts the weight while it is down instead)"
	}
	w.kv(ind, "priority", strconv.Itoa(in.priority), note)
	w.kv(ind, "advert_interval", in.advert, "")
	if in.preempt != nil && !*in.preempt {
		w.kv(ind, "preempt", "false", "keepalived nopreempt")
	}
	if in.preemptDelay != "" {
		w.kv(ind, "preempt_delay", in.preemptDelay, "")
	}
	if in.accept != nil {
		w.kv(ind, "accept", strconv.FormatBool(*in.accept), in.acceptNote)
	}
	if in.unicastSrc != "" {
		w.kv(ind, "unicast_src", in.unicastSrc, "")
	}
	if len(in.peers) > 0 {
		w.kv(ind, "unicast_peers", flowList(in.peers), "")
	}
	renderVIPs(w, "virtual_ips", in.vips)
	renderVIPs(w, "virtual_ips_excluded", in.excluded)
	renderItems(w, "virtual_routes", in.routes, true)
	renderItems(w, "virtual_rules", in.rules, true)
	renderTrackInterfaces(w, in.trackIfaces)
	renderItems(w, "track_scripts", in.trackScripts, false)
	renderItems(w, "track_files", in.trackFiles, true)
	renderItems(w, "track_processes", in.trackProcs, true)
	if in.notify != "" {
		w.kv(ind, "notify", yamlScalar(in.notify), "called as: PROGRAM INSTANCE <name> <state> <priority>")
	}
	for _, kv := range in.notifyStates {
		w.kv(ind, kv[0], kv[1], "")
	}
	if in.useVMAC {
		w.kv(ind, "use_vmac", "true", "")
	}
	if in.vmacXmitBase {
		w.kv(ind, "vmac_xmit_base", "true", "")
	}
	if in.authPass != "" {
		w.kv(ind, "auth_pass", yamlScalar(in.authPass), "")
	}
	for _, kv := range in.garp {
		w.kv(ind, kv[0], kv[1], "")
	}
}

// renderVIPs writes plain entries for VIPs on the instance's interface
// and {address, interface} for the others.
func renderVIPs(w *writer, key string, vips []vip) {
	if len(vips) == 0 {
		return
	}
	w.line(6, "%s:", key)
	for _, v := range vips {
		if v.iface == "" {
			w.line(8, "- %s", yamlScalar(v.prefix))
			continue
		}
		w.line(8, "- {address: %s, interface: %s}", flowScalar(v.prefix), flowScalar(v.iface))
	}
}

// renderItems writes a list of mappings, each on one line in flow style
// when flow is set, else as a block with its comment above it.
func renderItems(w *writer, key string, items []trackItem, flow bool) {
	if len(items) == 0 {
		return
	}
	w.line(6, "%s:", key)
	for _, it := range items {
		if flow {
			parts := make([]string, len(it.fields))
			for i, kv := range it.fields {
				parts[i] = kv[0] + ": " + flowValue(kv[1])
			}
			line := "- {" + strings.Join(parts, ", ") + "}"
			if it.comment != "" {
				line += "  # " + it.comment
			}
			w.line(8, "%s", line)
			continue
		}
		if it.comment != "" {
			w.comment(8, it.comment)
		}
		for i, kv := range it.fields {
			prefix := "  "
			if i == 0 {
				prefix = "- "
			}
			w.line(8, "%s%s: %s", prefix, kv[0], kv[1])
		}
	}
}

// renderTrackInterfaces writes a plain name for weight 0 (fault), else
// {name, weight}.
func renderTrackInterfaces(w *writer, items []trackItem) {
	if len(items) == 0 {
		return
	}
	w.line(6, "track_interfaces:")
	for _, it := range items {
		if len(it.fields) == 1 {
			w.line(8, "- %s", it.fields[0][1])
			continue
		}
		w.line(8, "- {name: %s, weight: %s}", flowValue(it.fields[0][1]), it.fields[1][1])
	}
}

func renderService(w *writer, s *service) {
	for _, cm := range s.comments {
		w.comment(2, cm)
	}
	w.line(2, "- name: %s", yamlScalar(safeName(s.name)))
	const ind = 4
	if len(s.listen) > 0 {
		w.kv(ind, "listen", flowList(s.listen), "keepalived virtual_server_group")
	} else {
		w.kv(ind, "vip", yamlScalar(s.vip), "")
		w.kv(ind, "port", strconv.Itoa(s.port), "")
	}
	w.kv(ind, "protocol", s.protocol, "")
	note := ""
	if !slices.Contains([]string{"mh", "rr", "wrr", "sh"}, s.scheduler) {
		note = "an IPVS scheduler: halb serves this service with IPVS"
	}
	w.kv(ind, "scheduler", s.scheduler, note)
	w.kv(ind, "forward", s.forward, "")
	if s.persistence != "" {
		w.kv(ind, "persistence", s.persistence, "")
	}
	if s.quorum != 1 {
		w.kv(ind, "quorum", strconv.Itoa(s.quorum), "")
	}
	if s.sorry != "" {
		w.kv(ind, "sorry_backend", strconv.Quote(s.sorry), "")
	}
	w.line(ind, "backends:")
	for i, b := range s.backends {
		w.line(ind+2, "- {address: %s, port: %s, weight: %d}", flowScalar(b[0]), b[1], s.weights[i])
	}
	renderCheck(w, s.check)
}

func renderCheck(w *writer, k *check) {
	const ind = 6
	w.line(4, "health_check:")
	w.kv(ind, "type", k.typ, "")
	if k.typ == "none" {
		return
	}
	w.kv(ind, "interval", duration(k.interval), "keepalived delay_loop")
	w.kv(ind, "timeout", duration(k.timeout), "")
	w.kv(ind, "rise", strconv.Itoa(k.rise), "")
	w.kv(ind, "fall", strconv.Itoa(k.fall), "keepalived retry + 1")
	if k.port != 0 {
		w.kv(ind, "port", strconv.Itoa(k.port), "keepalived connect_port")
	}
	if k.source != "" {
		w.kv(ind, "source", yamlScalar(k.source), "keepalived bindto")
	}
	if k.path != "" {
		w.kv(ind, "path", yamlScalar(k.path), "")
		w.kv(ind, "expect_status", k.expect, "")
	}
	if len(k.urls) > 0 {
		w.line(ind, "urls:")
		for _, u := range k.urls {
			parts := make([]string, len(u.fields))
			for i, kv := range u.fields {
				parts[i] = kv[0] + ": " + flowValue(kv[1])
			}
			w.line(ind+2, "- {%s}", strings.Join(parts, ", "))
		}
	}
	if k.command != "" {
		w.kv(ind, "command", k.command, "")
	}
}

// ---- YAML scalars ----

// plainRE: text YAML reads back as the same string when written bare.
var plainRE = regexp.MustCompile(`^[A-Za-z0-9/_.@%+-][A-Za-z0-9/_.@%+=:-]*$`)

// yamlScalar writes s bare when YAML reads it back as that string, else
// double-quoted (JSON's quoting is YAML's).
func yamlScalar(s string) string {
	if plainRE.MatchString(s) && !strings.HasSuffix(s, ":") && !looksTyped(s) {
		return s
	}
	return quote(s)
}

// flowScalar is yamlScalar inside [ ] or { }, where a colon is quoted too.
func flowScalar(s string) string {
	if strings.Contains(s, ":") {
		return quote(s)
	}
	return yamlScalar(s)
}

// flowValue re-quotes an already written value for a flow mapping: lists
// and quoted text pass; bare text with a colon is quoted.
func flowValue(v string) string {
	if strings.HasPrefix(v, "[") || strings.HasPrefix(v, `"`) || !strings.Contains(v, ":") {
		return v
	}
	return quote(v)
}

// quote writes s double-quoted: JSON's string syntax is YAML's.
func quote(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

// looksTyped: bare text YAML would read as a number, a boolean or null.
func looksTyped(s string) bool {
	switch strings.ToLower(s) {
	case "true", "false", "yes", "no", "on", "off", "null", "~", "y", "n":
		return true
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return true
	}
	if _, err := strconv.ParseInt(s, 0, 64); err == nil {
		return true
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	return false
}

func flowList(items []string) string {
	parts := make([]string, len(items))
	for i, s := range items {
		parts[i] = flowScalar(s)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
