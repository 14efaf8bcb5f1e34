package pki

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStandardSetVerifies(t *testing.T) {
	f := NewT(t, "test CA")
	for _, host := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := parse(t, f.ServerCert).Verify(x509.VerifyOptions{Roots: f.Pool, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := parse(t, f.ServerCert).Verify(x509.VerifyOptions{Roots: f.Pool, DNSName: "elsewhere.example"}); err == nil {
		t.Error("server certificate verified for a name it does not carry")
	}
	cli := parse(t, f.ClientCert)
	if _, err := cli.Verify(x509.VerifyOptions{Roots: f.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: f.Pool}); err == nil {
		t.Error("client certificate verified as a server certificate")
	}
	if len(f.ServerKeyPair.Certificate) == 0 || len(f.ClientKeyPair.Certificate) == 0 {
		t.Error("key pairs not loaded")
	}
}

func TestWrongOnPurpose(t *testing.T) {
	dir := t.TempDir()
	good, other := NewCAT(t, dir, "ca"), NewCAT(t, dir, "other-ca")
	exp, _ := good.IssueT(t, "expired", Leaf{Expired: true})
	_, err := parse(t, exp).Verify(x509.VerifyOptions{Roots: good.Pool, DNSName: "127.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate: err = %v, want an expiry error", err)
	}
	if c := parse(t, exp); !c.NotAfter.Before(time.Now()) {
		t.Errorf("expired certificate ends %v, in the future", c.NotAfter)
	}
	elsewhere, _ := good.IssueT(t, "elsewhere", Leaf{Hosts: []string{"pageserver.elsewhere.example", "10.9.9.9"}})
	if _, err := parse(t, elsewhere).Verify(x509.VerifyOptions{Roots: good.Pool, DNSName: "10.9.9.9"}); err != nil {
		t.Errorf("certificate for 10.9.9.9: %v", err)
	}
	if _, err := parse(t, elsewhere).Verify(x509.VerifyOptions{Roots: good.Pool, DNSName: "127.0.0.1"}); err == nil {
		t.Error("certificate for other hosts verified for 127.0.0.1")
	}
	foreign, _ := other.IssueT(t, "server", Leaf{})
	if _, err := parse(t, foreign).Verify(x509.VerifyOptions{Roots: good.Pool, DNSName: "127.0.0.1"}); err == nil {
		t.Error("another CA's certificate verified")
	}
}
