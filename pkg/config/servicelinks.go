package config

import (
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The names of the variables the kubelet sets in every container for each
// Service of the namespace (unless the pod says enableServiceLinks: false),
// <SVC> being the Service's name in upper case with - as _: a Service
// sluice-redis gives SLUICE_REDIS_SERVICE_HOST, SLUICE_REDIS_PORT, ...
// (kubernetes pkg/kubelet/envvars: FromServices, makeLinkVariables).
var (
	// <SVC>_SERVICE_HOST=10.0.0.1
	linkHost = regexp.MustCompile(`^[A-Z][A-Z0-9_]*_SERVICE_HOST$`)
	// <SVC>_SERVICE_PORT=6379, <SVC>_SERVICE_PORT_<PORT NAME>=6379
	linkServicePort = regexp.MustCompile(`^[A-Z][A-Z0-9_]*_SERVICE_PORT(_[A-Z0-9_]+)?$`)
	// <SVC>_PORT_6379_TCP=tcp://10.0.0.1:6379, and the same with _PROTO=tcp,
	// _PORT=6379, _ADDR=10.0.0.1
	linkPortProto = regexp.MustCompile(`^[A-Z][A-Z0-9_]*_PORT_([0-9]+)_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$`)
	// <SVC>_PORT=tcp://10.0.0.1:6379 (the first port, Docker's link form)
	linkPort = regexp.MustCompile(`^[A-Z][A-Z0-9_]*_PORT$`)
)

// isServiceLink reports whether name=value is one of the variables the
// kubelet sets for a Service: the name has one of its shapes and the value
// the matching one (an IP, a port, proto://ip:port). A setting never has
// those names, and a typo of one (SLUICE_RECEIVER_PORT=8080) lacks the
// value's shape, so it is still refused.
func isServiceLink(name, value string) bool {
	if m := linkPortProto.FindStringSubmatch(name); m != nil {
		return isPortProtoLink(m[1], strings.ToLower(m[2]), m[3], value)
	}
	switch {
	case linkHost.MatchString(name):
		return net.ParseIP(value) != nil
	case linkServicePort.MatchString(name):
		return isPort(value)
	case linkPort.MatchString(name):
		_, _, ok := linkAddress(value)
		return ok
	}
	return false
}

// isPortProtoLink is isServiceLink for <NAME>_PORT_<port>_<PROTO><suffix>:
// the value is the protocol, the port, an IP or proto://ip:port as the
// suffix says.
func isPortProtoLink(port, proto, suffix, value string) bool {
	switch suffix {
	case "_PROTO":
		return value == proto
	case "_PORT":
		return value == port && isPort(value)
	case "_ADDR":
		return net.ParseIP(value) != nil
	}
	p, pt, ok := linkAddress(value)
	return ok && p == proto && pt == port
}

// linkAddress splits proto://ip:port (proto tcp, udp or sctp; an IPv6
// address in brackets).
func linkAddress(s string) (proto, port string, ok bool) {
	proto, hostPort, ok := strings.Cut(s, "://")
	if !ok || !slices.Contains(linkProtocols, proto) {
		return "", "", false
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil || net.ParseIP(host) == nil || !isPort(port) {
		return "", "", false
	}
	return proto, port, true
}

// linkProtocols are a service link's protocols, as its values write them.
var linkProtocols = []string{"tcp", "udp", "sctp"}

// isPort reports whether s is a port number in [1, 65535], in decimal.
func isPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && portRange.Has(float64(n)) && strconv.Itoa(n) == s
}

// portRange is a TCP port's.
var portRange = Closed(1, 65535)
