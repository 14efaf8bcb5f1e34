// Package pki makes throw-away TLS material for tests, benchmarks and the
// demo: certificate authorities that issue server and client certificates,
// including wrong ones on purpose (expired, for other names), written as PEM
// files. It is the one place the project's tests make certificates.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// CA is a certificate authority whose files live in one directory.
type CA struct {
	// File is the CA certificate's PEM file.
	File string
	// Pool holds the CA certificate.
	Pool *x509.CertPool

	dir, name string
	cert      *x509.Certificate
	key       *ecdsa.PrivateKey

	mu     sync.Mutex
	serial int64
}

// Leaf shapes a certificate.
type Leaf struct {
	// Client makes a client certificate (else a server certificate).
	Client bool
	// Hosts are the server names, IP addresses or DNS names. A server
	// certificate without any is for 127.0.0.1, ::1 and localhost.
	Hosts []string
	// Expired makes a certificate that ended an hour ago.
	Expired bool
}

// NewCA creates a CA named name, its certificate written to dir/name.pem.
func NewCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &CA{File: filepath.Join(dir, name+".pem"), Pool: x509.NewCertPool(), dir: dir, name: name, cert: cert, key: key, serial: 1}
	c.Pool.AddCert(cert)
	if err := writePEM(c.File, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return c, nil
}

// Issue writes a key pair signed by c, named after c and name, and returns
// the certificate and key files.
func (c *CA) Issue(name string, l Leaf) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	c.mu.Lock()
	c.serial++
	serial := c.serial
	c.mu.Unlock()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if l.Client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if l.Expired {
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Hour)
	}
	hosts := l.Hosts
	if !l.Client && len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", "localhost"}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(c.dir, c.name+"-"+name+".pem")
	keyFile = filepath.Join(c.dir, c.name+"-"+name+"-key.pem")
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	if err := writePEM(keyFile, "PRIVATE KEY", kder); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// Files is the usual set: a CA, a server certificate for 127.0.0.1, ::1 and
// localhost, and a client certificate, all signed by the CA.
type Files struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// Pool holds the CA certificate.
	Pool *x509.CertPool
	// ServerKeyPair and ClientKeyPair are the key pairs, loaded.
	ServerKeyPair, ClientKeyPair tls.Certificate
}

// New writes a fresh CA named name and its server and client key pairs
// into dir.
func New(dir, name string) (Files, error) {
	ca, err := NewCA(dir, name)
	if err != nil {
		return Files{}, err
	}
	f := Files{CA: ca.File, Pool: ca.Pool}
	if f.ServerCert, f.ServerKey, err = ca.Issue("pageserver", Leaf{}); err != nil {
		return f, err
	}
	if f.ClientCert, f.ClientKey, err = ca.Issue("pagefetcher", Leaf{Client: true}); err != nil {
		return f, err
	}
	if f.ServerKeyPair, err = tls.LoadX509KeyPair(f.ServerCert, f.ServerKey); err != nil {
		return f, err
	}
	f.ClientKeyPair, err = tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	return f, err
}

// NewT is New in a temporary directory of t, failing t on error.
func NewT(t testing.TB, name string) Files {
	t.Helper()
	f, err := New(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// NewCAT is NewCA failing t on error; its Issue is IssueT.
func NewCAT(t testing.TB, dir, name string) *CA {
	t.Helper()
	c, err := NewCA(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// IssueT is Issue failing t on error.
func (c *CA) IssueT(t testing.TB, name string, l Leaf) (certFile, keyFile string) {
	t.Helper()
	cf, kf, err := c.Issue(name, l)
	if err != nil {
		t.Fatal(fmt.Errorf("issue %s: %w", name, err))
	}
	return cf, kf
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
