package config

import "testing"

// TestScrubHidesSecretsAlone: a message that quotes only part of a URL —
// the user information, the password, a query value, percent-decoded or
// inside a quoted string — or the receiver's token shows none of the
// secrets; a password shorter than minSecretLen is hidden only inside its
// URL, so that the rest of the message stays readable.
func TestScrubHidesSecretsAlone(t *testing.T) {
	l := layers{
		"redis.url":      {Key: "redis.url", Value: `redis://u:s3cr%40t"PW@h:6379/0?password=qu3ry+pw&db=1`, Source: "env SLUICE_REDIS_URL"},
		"receiver.token": {Key: "receiver.token", Value: "t0ken-value", Source: "env SLUICE_RECEIVER_TOKEN"},
	}
	for _, tc := range []struct{ msg, want string }{
		{`parse "redis://u:s3cr%40t\"PW@h:6379/0?password=qu3ry+pw&db=1": bad`, `parse "redis://u:xxxxx@h:6379/0?password=xxxxx&db=1": bad`},
		{`net/url: invalid userinfo u:s3cr%40t"PW`, `net/url: invalid userinfo u:xxxxx`},
		{`invalid userinfo "u:s3cr%40t\"PW"`, `invalid userinfo "u:xxxxx"`},
		{`WRONGPASS for password s3cr@t"PW`, `WRONGPASS for password xxxxx`},
		{`password "s3cr@t\"PW" refused`, `password "xxxxx" refused`},
		{`option password: "qu3ry pw" is not valid`, `option password: "xxxxx" is not valid`},
		{`option password=qu3ry+pw`, `option password=xxxxx`},
		{`bearer t0ken-value refused`, `bearer (hidden) refused`},
		{`address "h:6379": no route`, `address "h:6379": no route`},
	} {
		if got := l.scrub(tc.msg); got != tc.want {
			t.Errorf("scrub(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
	// Secrets of 1 to 3 characters are hidden in their URL, not alone:
	// every "ab" and "6" of the message would become xxxxx.
	short := layers{
		"redis.url":      {Key: "redis.url", Value: "redis://u:ab@h:6379/0?token=6"},
		"receiver.token": {Key: "receiver.token", Value: "abc"},
	}
	msg := `parse "redis://u:ab@h:6379/0?token=6": port 6379 of host h: about abc`
	if got, want := short.scrub(msg), `parse "redis://u:xxxxx@h:6379/0?token=xxxxx": port 6379 of host h: about abc`; got != want {
		t.Errorf("short secrets: scrub = %q, want %q", got, want)
	}
	// A 4-character password is hidden alone.
	four := layers{"redis.cluster_url": {Key: "redis.cluster_url", Value: "redis://:pw12@a:6379?addr=b:6380"}}
	if got, want := four.scrub(`auth "pw12" at b:6380`), `auth "xxxxx" at b:6380`; got != want {
		t.Errorf("4 characters: scrub = %q, want %q", got, want)
	}
}
