//go:build !linux

package kmod

import (
	"errors"
	"os"
)

func finitModule(*os.File, string, int) error {
	return errors.New("loading kernel modules needs Linux")
}

func finitOutcome(error) finitResult { return finitOther }
