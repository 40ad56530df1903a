package daemon

import (
	"fmt"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifySystemd tells systemd (Type=notify) where the daemon is; without
// NOTIFY_SOCKET it does nothing.
func (d *Daemon) notifySystemd(state string) {
	if state == sd.SdNotifyReloading {
		// systemd 253's Type=notify-reload wants the time the reload began.
		var ts unix.Timespec
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
			state += fmt.Sprintf("\nMONOTONIC_USEC=%d", ts.Nano()/1000)
		}
	}
	if _, err := sd.SdNotify(false, state); err != nil {
		d.log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}
