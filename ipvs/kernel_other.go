//go:build !linux

package ipvs

import "errors"

func dialNetlink() (Kernel, error) {
	return nil, errors.New("IPVS needs Linux")
}
