//go:build halbdocs

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { tagged = append(tagged, newDocsCmd) }

// newDocsCmd writes what a package ships beside the binary, made from the
// command tree itself so that neither can drift from the flags: a man page
// per command (section 8: halb is run by root) in DIR/man, and the bash,
// zsh and fish completions in DIR/completions. SOURCE_DATE_EPOCH dates the
// pages, so that two builds of one commit write the same bytes.
func newDocsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "docs DIR",
		Short:  "Write the man pages and shell completions into DIR",
		Args:   cobra.ExactArgs(1),
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			root.DisableAutoGenTag = true
			if err := writeManPages(root, filepath.Join(args[0], "man")); err != nil {
				return err
			}
			return writeCompletions(root, filepath.Join(args[0], "completions"))
		},
	}
}

func writeManPages(root *cobra.Command, dir string) error {
	date, err := sourceDate()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	header := &doc.GenManHeader{Section: "8", Date: &date, Source: "halb " + version, Manual: "halb manual"}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	return nil
}

// sourceDate is SOURCE_DATE_EPOCH's time (the commit's, from the
// Makefile), else now.
func sourceDate() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Now().UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

func writeCompletions(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, gen := range map[string]func(string) error{
		"halb.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_halb":     root.GenZshCompletionFile,
		"halb.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	} {
		if err := gen(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("completion %s: %w", name, err)
		}
	}
	return nil
}
