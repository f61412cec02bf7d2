package config_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/config"
)

// serviceLinks returns the variables the kubelet sets for a Service with
// ClusterIP ip and the given ports (name -> port, TCP), by its documented
// rule (pkg/kubelet/envvars: {SVC}_SERVICE_HOST, {SVC}_SERVICE_PORT[_NAME],
// and Docker's link form {SVC}_PORT, {SVC}_PORT_<n>_TCP[_PROTO|_PORT|_ADDR]).
// deploy/verify does the same from the manifests' Service objects.
func serviceLinks(service, ip string, ports [][2]string) []string {
	svc := strings.ToUpper(strings.ReplaceAll(service, "-", "_"))
	env := []string{svc + "_SERVICE_HOST=" + ip, svc + "_SERVICE_PORT=" + ports[0][1]}
	for i, p := range ports {
		if p[0] != "" {
			env = append(env, svc+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p[0], "-", "_"))+"="+p[1])
		}
		url := "tcp://" + net.JoinHostPort(ip, p[1])
		if i == 0 {
			env = append(env, svc+"_PORT="+url)
		}
		pre := fmt.Sprintf("%s_PORT_%s_TCP", svc, p[1])
		env = append(env, pre+"="+url, pre+"_PROTO=tcp", pre+"_PORT="+p[1], pre+"_ADDR="+ip)
	}
	return env
}

// TestServiceLinksIgnored: the variables Kubernetes injects for the
// Services of deploy/ (sluice-redis, sluice-controller, ...) are not taken
// for misspelt settings; the settings around them still load, and a real
// typo, or a name of that shape with a value of another, is still refused.
func TestServiceLinksIgnored(t *testing.T) {
	for _, ip := range []string{"10.96.0.10", "fd00:10:96::a"} {
		env := []string{"SLUICE_RECEIVER_LISTEN=:9090", "MDP_FB_DWELL=7s"}
		for i, svc := range []string{"sluice-redis", "sluice-controller", "sluice-coordinator", "sluice-pipeline", "sluice-receiver"} {
			port := [][2]string{{"http", "8080"}}
			if svc == "sluice-redis" {
				port = [][2]string{{"redis", "6379"}, {"", strconv.Itoa(16379 + i)}}
			}
			env = append(env, serviceLinks(svc, ip, port)...)
		}
		s, err := config.Load(config.Sources{Environ: env})
		if err != nil {
			t.Fatalf("with %d service variables (%s): %v", len(env)-2, ip, err)
		}
		if s.Receiver.Listen != ":9090" || s.Feedback.Options.Rise.Dwell.String() != "7s" {
			t.Fatalf("the settings beside them: listen %q, dwell %v", s.Receiver.Listen, s.Feedback.Options.Rise.Dwell)
		}
	}
	for _, bad := range []string{
		"SLUICE_REDIS_URLL=redis://x:6379", // a typo of a setting
		"MDP_FB_DWEL=5s",
		"SLUICE_RECEIVER_PORT=8080",                    // <SVC>_PORT is a URL, not a number
		"SLUICE_REDIS_PORT=6379",                       // likewise
		"SLUICE_REDIS_SERVICE_HOST=redis.internal",     // an IP, not a name
		"SLUICE_REDIS_SERVICE_PORT=99999",              // a port in [1, 65535]
		"SLUICE_REDIS_PORT_6379_TCP=tcp://10.0.0.1:80", // the port of the name
		"SLUICE_REDIS_PORT_6379_TCP_PROTO=udp",         // the protocol of the name
		"SLUICE_REDIS_PORT=http://10.0.0.1:6379",       // tcp, udp or sctp
		"MDP_RATE_X_PORT=8080",
	} {
		if _, err := config.Load(config.Sources{Environ: []string{bad}}); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("%s: %v, want it refused, named", bad, err)
		}
	}
}
