package main

import "os"

// build makes the LAN of the diagram in main.go, starts the web servers
// and writes the nodes' configs. What it makes is found again by name
// (sweep), so an error half-way leaves nothing that the clean-up misses.
func (d *demo) build() error {
	if err := mountBPFFS(); err != nil {
		return err
	}
	var err error
	if d.lan, err = d.newHost("lan"); err != nil {
		return err
	}
	if err := newBridge(d.lan); err != nil {
		return err
	}

	ch, err := d.newHost("client")
	if err != nil {
		return err
	}
	if _, err := plug(d.lan, ch, clientIP); err != nil {
		return err
	}
	if err := txChecksumOff(ch); err != nil {
		return err
	}

	var backendAddrs []string
	for _, b := range beIPs {
		h, err := d.newHost(b.name)
		if err != nil {
			return err
		}
		be := &backend{host: h, addr: b.addr.Addr()}
		d.backends = append(d.backends, be)
		if _, err := plug(d.lan, h, b.addr); err != nil {
			return err
		}
		if err := holdVIP(h, vip); err != nil {
			return err
		}
		if err := be.serve(); err != nil {
			return err
		}
		backendAddrs = append(backendAddrs, b.addr.Addr().String())
	}

	lbByMAC := map[string]string{}
	for i, name := range []string{"lb1", "lb2"} {
		h, err := d.newHost(name)
		if err != nil {
			return err
		}
		n := &node{host: h, priority: 150 - 50*i}
		d.lbs = append(d.lbs, n)
		port, err := plug(d.lan, h, lbIPs[name])
		if err != nil {
			return err
		}
		pass, err := passXDP(d.lan, port)
		if err != nil {
			return err
		}
		d.passes = append(d.passes, pass)
		mac, err := macOf(h)
		if err != nil {
			return err
		}
		lbByMAC[mac.String()] = name
		if err := n.writeConfig(stateDir, vip.String(), backendAddrs); err != nil {
			return err
		}
	}
	d.client = newClient(ch, vip, lbByMAC)
	return nil
}

// teardown stops what runs, politely: the client, then halb on each node
// (SIGTERM: `halb run --cleanup` removes its VIP, detaches and unpins),
// then the web servers; it lets go of the namespaces for sweep to delete.
func (d *demo) teardown() {
	if d.stop != nil {
		d.stop()
	}
	for _, n := range d.lbs {
		if !n.stop(stopWait) {
			d.say("halb on %s did not stop cleanly; the clean-up removes what it left", n.name)
		}
		if _, err := os.Stat(n.bpffs); err == nil {
			d.say("%s's XDP program is still attached and pinned under %s (its halb was killed); the clean-up removes it", n.name, n.bpffs)
		}
	}
	for _, b := range d.backends {
		b.stopServing()
	}
	for _, p := range d.passes {
		p.Close()
	}
	for _, h := range d.hosts {
		h.close()
	}
}

// newHost makes a host and remembers it for teardown.
func (d *demo) newHost(name string) (*host, error) {
	h, err := newHost(name)
	if err == nil {
		d.hosts = append(d.hosts, h)
	}
	return h, err
}
