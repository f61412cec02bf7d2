package config

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// secret keys are never shown: Values shows "(set)", errors "(hidden)".
var secret = map[string]bool{"receiver.token": true}

// isURLKey reports whether key holds a Redis URL, whose password is hidden
// wherever the URL is shown.
func isURLKey(key string) bool { return key == "redis.url" || key == "redis.cluster_url" }

// hiddenPassword replaces the password of a URL wherever it is shown.
const hiddenPassword = "xxxxx"

// redact returns raw with its password hidden (see redactURL).
func redact(raw string) string {
	out, _ := redactURL(raw)
	return out
}

// redactURL returns raw with its password hidden, whether or not it parses
// as a URL, and the secrets it hid, as written in raw: the text after the
// first ":" of the user information (between "://" and the last "@" before
// the path), and the value of any query parameter whose name says it holds
// a secret (password, pass, pwd, secret, token, auth).
func redactURL(raw string) (string, []string) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw, nil
	}
	var secrets []string
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		if user, password, hasPassword := strings.Cut(rest[:at], ":"); hasPassword {
			rest = user + ":" + hiddenPassword + rest[at:]
			secrets = append(secrets, password)
		}
	}
	base, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return scheme + "://" + rest, secrets
	}
	query, fragment, hasFragment := strings.Cut(query, "#")
	params := strings.Split(query, "&")
	for i, p := range params {
		name, value, hasValue := strings.Cut(p, "=")
		lower := strings.ToLower(name)
		if hasValue && slices.ContainsFunc([]string{"pass", "pwd", "secret", "token", "auth"}, func(w string) bool { return strings.Contains(lower, w) }) {
			params[i] = name + "=" + hiddenPassword
			secrets = append(secrets, value)
		}
	}
	out := scheme + "://" + base + "?" + strings.Join(params, "&")
	if hasFragment {
		out += "#" + fragment
	}
	return out, secrets
}

// shown is how an error shows the value of key: quoted, a URL's password
// hidden, a secret not at all.
func (l layers) shown(key string) string {
	v := l[key].Value
	switch {
	case secret[key] && v != "":
		return "(hidden)"
	case isURLKey(key):
		return strconv.Quote(redact(v))
	}
	return strconv.Quote(v)
}

// minSecretLen is the shortest password or token that scrub hides on its
// own, wherever it appears in a message; a URL that holds a password is
// hidden whole whatever the password's length. A shorter secret would turn
// every occurrence of its characters into xxxxx — for a 1 or 2 character
// password, most ports, hosts and words of the message — and at most 95³
// (857 375) printable strings of 3 characters or fewer protect nothing
// that trying them against AUTH would not find. From 4 characters a secret
// drawn at random occurs by chance in a 200-character message about once
// in 400 000 (200 / 95⁴), and when it does (a password that is a word of
// the message) the message loses that word, not its sense.
const minSecretLen = 4

// scrub hides, in a message from elsewhere (a URL parser's error), the
// URLs of the layers and the secrets: a URL that holds a password shows
// redacted, and each password (that of the user information, the value of
// a query parameter that holds a secret) shows as xxxxx and the receiver's
// token as (hidden) wherever they appear alone, when they are at least
// minSecretLen characters long. Each is looked for as written, as
// percent-decoded, and as inside a quoted string (%q).
func (l layers) scrub(msg string) string {
	for key, v := range l {
		switch {
		case v.Value == "":
		case isURLKey(key):
			redacted, secrets := redactURL(v.Value)
			if redacted == v.Value {
				continue
			}
			msg = replaceForms(msg, v.Value, redacted)
			for _, s := range secrets {
				if len(s) >= minSecretLen {
					msg = replaceForms(msg, s, hiddenPassword)
				}
			}
		case secret[key] && len(v.Value) >= minSecretLen:
			msg = replaceForms(msg, v.Value, "(hidden)")
		}
	}
	return msg
}

// replaceForms replaces in msg each form in which s may be shown: as
// written, percent-decoded (as net/url gives back a password, or a query
// value with + for a space), and each of those as inside a quoted string.
func replaceForms(msg, s, with string) string {
	forms := []string{s}
	for _, unescape := range []func(string) (string, error){url.PathUnescape, url.QueryUnescape} {
		if dec, err := unescape(s); err == nil && !slices.Contains(forms, dec) {
			forms = append(forms, dec)
		}
	}
	for _, f := range forms {
		msg = strings.ReplaceAll(msg, f, with)
		if q := strconv.Quote(f); q[1:len(q)-1] != f {
			msg = strings.ReplaceAll(msg, q[1:len(q)-1], with)
		}
	}
	return msg
}
