package redistest

import "crypto/x509"

// WriteCerts writes into dir a CA (ca.pem) and a certificate for 127.0.0.1
// signed by it (server.pem, server-key.pem), made for the test, and returns
// a pool that trusts the CA: for TLS servers other than Redis too.
func WriteCerts(dir string) (*x509.CertPool, error) { return writeCerts(dir) }
