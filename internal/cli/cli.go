// Package cli holds what the postcopy binaries (pageserver, pagefetcher)
// share: logger construction from flags, reading the shared token without
// ever showing it, TLS configurations from PEM files, one-line JSON events
// on stdout for orchestrators, and the usage error that makes a binary exit
// with status 2.
package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/version"
)

// Exit statuses of the binaries.
const (
	// ExitOK: the work is done, or a graceful stop completed.
	ExitOK = 0
	// ExitFailure: a runtime failure.
	ExitFailure = 1
	// ExitUsage: bad flags or arguments.
	ExitUsage = 2
)

// UsageError is a problem with the command line: the binary prints it and
// exits with ExitUsage. Its message names the flag and the bad value.
type UsageError struct {
	// Flag is the flag's name without dashes; empty for positional
	// arguments or problems of the command line as a whole.
	Flag string
	// Value is the offending value, if any. Never a secret: tokens do not
	// travel in flags.
	Value string
	// Reason says what is wrong.
	Reason string
}

// Error formats e as "--flag VALUE: reason" (or a shorter form).
func (e *UsageError) Error() string {
	switch {
	case e.Flag != "" && e.Value != "":
		return fmt.Sprintf("--%s %q: %s", e.Flag, e.Value, e.Reason)
	case e.Flag != "":
		return fmt.Sprintf("--%s: %s", e.Flag, e.Reason)
	}
	return e.Reason
}

// Usagef returns a UsageError for flag and value.
func Usagef(flag, value, format string, args ...any) *UsageError {
	return &UsageError{Flag: flag, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// ExitError is an error with the exit status it ends the binary with (a
// binary's own codes beyond these three: pagefetcher's). Err nil: the
// failure has been logged already, and Fail prints nothing more.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Exit gives err the exit status code.
func Exit(code int, err error) *ExitError { return &ExitError{Code: code, Err: err} }

// Exitf is Exit with a formatted error (%w wraps).
func Exitf(code int, format string, a ...any) *ExitError {
	return &ExitError{Code: code, Err: fmt.Errorf(format, a...)}
}

// ExitCode maps an error to the binary's exit status: nil → ExitOK, an
// ExitError → its code (the outermost in the chain), a UsageError →
// ExitUsage, anything else → ExitFailure.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	var u *UsageError
	if errors.As(err, &u) {
		return ExitUsage
	}
	return ExitFailure
}

// Fail reports the error a binary exits with, once, and returns its exit
// status (ExitCode): one line "NAME: error" on stderr (newlines made "; "),
// or, with a JSON logger (--log-json), one error log line with exit_code
// and error.
func Fail(stderr io.Writer, name string, jsonLog hclog.Logger, err error) int {
	code := ExitCode(err)
	if e, ok := err.(*ExitError); ok && e.Err == nil {
		return code
	}
	if jsonLog != nil {
		jsonLog.Error("exiting", "exit_code", code, "error", err.Error())
	} else {
		fmt.Fprintf(stderr, "%s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return code
}

// LogLevels lists the accepted --log-level values.
const LogLevels = "trace, debug, info, warn, error, off"

// NewLogger returns the binary's root logger, writing to w (stderr) in
// hclog's text format or, with jsonFormat, one JSON object per line. A bad
// level gives an error naming it.
func NewLogger(name, level string, jsonFormat bool, w io.Writer) (hclog.Logger, error) {
	var lvl hclog.Level
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "trace":
		lvl = hclog.Trace
	case "debug":
		lvl = hclog.Debug
	case "info", "":
		lvl = hclog.Info
	case "warn", "warning":
		lvl = hclog.Warn
	case "error":
		lvl = hclog.Error
	case "off":
		lvl = hclog.Off
	default:
		return nil, fmt.Errorf("unknown log level %q (%s)", level, LogLevels)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:            name,
		Level:           lvl,
		Output:          w,
		JSONFormat:      jsonFormat,
		IncludeLocation: false,
		TimeFormat:      "2006-01-02T15:04:05.000000Z07:00",
	}), nil
}

// ReadToken returns the shared token: the content of file if file is not
// empty (one trailing newline, "\n" or "\r\n", removed), else the value of
// the environment variable envVar. It returns nil and no error when neither
// is given (the caller decides whether that is allowed), and a *UsageError
// when the file cannot be read or the token is empty: it names --token-file
// and the file, or the variable, never the token.
func ReadToken(file, envVar string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, Usagef("token-file", file, "%v", pathErr(err))
		}
		b = trimNewline(b)
		if len(b) == 0 {
			return nil, Usagef("token-file", file, "the file is empty")
		}
		return b, nil
	}
	if envVar == "" {
		return nil, nil
	}
	v, ok := os.LookupEnv(envVar)
	if !ok {
		return nil, nil
	}
	b := trimNewline([]byte(v))
	if len(b) == 0 {
		return nil, &UsageError{Reason: fmt.Sprintf("environment variable %s is set but empty", envVar)}
	}
	return b, nil
}

// pathErr drops the operation and the path from a *fs.PathError, which a
// UsageError names already: "no such file or directory".
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func trimNewline(b []byte) []byte {
	if bytes.HasSuffix(b, []byte("\r\n")) {
		return b[:len(b)-2]
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}

// ServerTLS returns a TLS configuration serving certFile/keyFile (PEM); with
// clientCAFile, clients must present a certificate signed by one of its CAs
// (mutual TLS). TLS 1.2 is the minimum. A file that cannot be read or holds
// no usable PEM gives a *UsageError naming its flag: --tls-cert, --tls-key,
// --tls-client-ca.
func ServerTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, &UsageError{Flag: "tls-key", Reason: "--tls-cert and --tls-key go together"}
	}
	pair, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pool, err := LoadCAPool("tls-client-ca", clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLS returns a TLS configuration that trusts the CAs of caFile (the
// system's roots if empty) and, with certFile and keyFile, presents that
// client certificate (for mutual TLS). TLS 1.2 is the minimum. A file that
// cannot be read or holds no usable PEM gives a *UsageError naming its flag:
// --tls-ca, --tls-cert, --tls-key.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := LoadCAPool("tls-ca", caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, &UsageError{Flag: "tls-key", Reason: "--tls-cert and --tls-key go together"}
	}
	if certFile != "" {
		pair, err := LoadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// LoadKeyPair reads a certificate (--tls-cert) and its private key
// (--tls-key), PEM. Its errors are *UsageErrors naming the flag of the file
// at fault: the certificate's when it cannot be read or holds no
// certificate, the key's otherwise (unreadable, no key, or not the key of
// that certificate).
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, Usagef("tls-cert", certFile, "%v", pathErr(err))
	}
	if _, err := firstCert(certPEM); err != nil {
		return tls.Certificate{}, Usagef("tls-cert", certFile, "%v", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, Usagef("tls-key", keyFile, "%v", pathErr(err))
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, Usagef("tls-key", keyFile, "%v (certificate: --tls-cert %s)", err, certFile)
	}
	return pair, nil
}

// firstCert parses the first PEM certificate of b.
func firstCert(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// LoadCAPool reads the PEM certificates of file (given by --flag) into a
// pool; a file that cannot be read or holds no certificate gives a
// *UsageError naming the flag.
func LoadCAPool(flag, file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, Usagef(flag, file, "%v", pathErr(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, Usagef(flag, file, "no PEM certificate found")
	}
	return pool, nil
}

// VersionFlag registers --version on fs; WantsVersion then says whether the
// command line asked for it.
func VersionFlag(fs *flag.FlagSet) {
	fs.Bool("version", false, "print the version (module version, VCS revision, Go version) and exit")
}

// WantsVersion reports whether args ask for --version (or -version, or
// --version=true) before any "--". It is checked before the flags are
// validated, so that --version works without the flags a run needs.
func WantsVersion(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--version", "-version", "--version=true", "-version=true":
			return true
		}
	}
	return false
}

// PrintVersion writes "NAME VERSION" for --version.
func PrintVersion(w io.Writer, name string) {
	fmt.Fprintf(w, "%s %s\n", name, version.Get())
}
