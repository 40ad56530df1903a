package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/internal/script"
	"github.com/halb-lb/halb/keepalived"
)

// Exit statuses of `halb import` beyond exitOK and exitFailure (could not
// read or write a file): the file is not keepalived's grammar, or it was
// converted with approximations (every one reported).
const (
	exitImportSyntax = 2
	exitImportApprox = 3
)

// statusError carries an exit status other than 1 out of a command; its
// message, if any, has been written already or is written by execute.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func newImportCmd() *cobra.Command {
	var output, configID string
	cmd := &cobra.Command{
		Use:   "import [-o FILE] [--config-id ID] KEEPALIVED.CONF",
		Short: "Convert a keepalived configuration to halb's",
		Long: `Convert a keepalived configuration to halb's YAML.

Includes are followed (globs relative to the including file), and @ID
lines are kept for --config-id, by default the first part of this host's
name (keepalived's -i). Every keyword that is not carried across exactly
is reported on stderr as file:line: keyword: what halb does instead, or
that it is dropped.

The YAML goes to stdout, or with -o to FILE, written whole or not at all
(a temporary file in FILE's directory, synced and renamed over it).

Exit status: 0 converted exactly; 3 converted with approximations or
omissions (all listed); 2 the file is not keepalived's grammar, or cannot
become a valid halb configuration (with the line); 1 a file could not be
read or written.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("config-id") {
				configID = defaultConfigID()
			}
			return runImport(cmd, args[0], output, configID)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the YAML to FILE (default stdout)")
	cmd.Flags().StringVar(&configID, "config-id", "", "keep @ID lines for this id (default: the host name up to its first dot)")
	return cmd
}

// defaultConfigID is keepalived's: the node name up to its first dot.
func defaultConfigID() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	id, _, _ := strings.Cut(h, ".")
	return id
}

func runImport(cmd *cobra.Command, path, output, configID string) error {
	res, err := keepalived.Import(path, keepalived.ImportOptions{
		Options:      keepalived.Options{ConfigID: configID},
		LookPath:     keepalived.SystemLookPath,
		CheckProgram: script.Check,
	})
	var syn *keepalived.SyntaxError
	var conv *keepalived.ConvertError
	var refused *keepalived.RefusedError
	switch {
	case errors.As(err, &syn), errors.As(err, &conv), errors.As(err, &refused):
		return &statusError{code: exitImportSyntax, msg: err.Error()}
	case err != nil:
		return err
	}
	stderr := cmd.ErrOrStderr()
	if err := res.WriteReport(stderr); err != nil {
		return err
	}
	if output == "" {
		if _, err := cmd.OutOrStdout().Write(res.YAML); err != nil {
			return fmt.Errorf("write the configuration: %w", err)
		}
	} else if err := writeWhole(output, res.YAML); err != nil {
		return err
	}
	if !res.Exact() {
		return &statusError{code: exitImportApprox,
			msg: fmt.Sprintf("%s: converted with approximations: every keyword not carried across exactly is listed above", path)}
	}
	return nil
}

// writeWhole replaces path with data or leaves it as it was: a temporary
// file in the same directory, synced, then renamed over path, and the
// directory synced so that the rename survives a crash.
func writeWhole(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// 0600: the file may hold a VRRP password.
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
