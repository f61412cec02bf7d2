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
	rest, secrets := hideUserPassword(rest)
	base, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return scheme + "://" + rest, secrets
	}
	query, fragment, hasFragment := strings.Cut(query, "#")
	query, hidden := hideSecretParams(query)
	out := scheme + "://" + base + "?" + query
	if hasFragment {
		out += "#" + fragment
	}
	return out, append(secrets, hidden...)
}

// hideUserPassword hides the password of the user information of rest (a
// URL after "://"): the text after the first ":" before the last "@"
// before the path. It returns rest so redacted and the password.
func hideUserPassword(rest string) (string, []string) {
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return rest, nil
	}
	user, password, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return rest, nil
	}
	return user + ":" + hiddenPassword + rest[at:], []string{password}
}

// secretParamWords are what a query parameter's name holds when its value
// is a secret.
var secretParamWords = []string{"pass", "pwd", "secret", "token", "auth"}

// hideSecretParams hides the value of each parameter of query whose name
// says it holds a secret, and returns query so redacted and those values.
func hideSecretParams(query string) (string, []string) {
	var secrets []string
	params := strings.Split(query, "&")
	for i, p := range params {
		name, value, hasValue := strings.Cut(p, "=")
		lower := strings.ToLower(name)
		if hasValue && slices.ContainsFunc(secretParamWords, func(w string) bool { return strings.Contains(lower, w) }) {
			params[i] = name + "=" + hiddenPassword
			secrets = append(secrets, value)
		}
	}
	return strings.Join(params, "&"), secrets
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
			msg = scrubURL(msg, v.Value)
		case secret[key] && len(v.Value) >= minSecretLen:
			msg = replaceForms(msg, v.Value, "(hidden)")
		}
	}
	return msg
}

// scrubURL hides in msg the URL raw, if it holds a secret, and each of
// its secrets of at least minSecretLen characters.
func scrubURL(msg, raw string) string {
	redacted, secrets := redactURL(raw)
	if redacted == raw {
		return msg
	}
	msg = replaceForms(msg, raw, redacted)
	for _, s := range secrets {
		if len(s) >= minSecretLen {
			msg = replaceForms(msg, s, hiddenPassword)
		}
	}
	return msg
}

// forms returns s as written and as percent-decoded (path and query
// escaping), each once.
func forms(s string) []string {
	out := []string{s}
	for _, unescape := range []func(string) (string, error){url.PathUnescape, url.QueryUnescape} {
		if dec, err := unescape(s); err == nil && !slices.Contains(out, dec) {
			out = append(out, dec)
		}
	}
	return out
}

// replaceForms replaces in msg each form in which s may be shown: as
// written, percent-decoded (as net/url gives back a password, or a query
// value with + for a space), and each of those as inside a quoted string.
func replaceForms(msg, s, with string) string {
	for _, f := range forms(s) {
		msg = strings.ReplaceAll(msg, f, with)
		if q := strconv.Quote(f); q[1:len(q)-1] != f {
			msg = strings.ReplaceAll(msg, q[1:len(q)-1], with)
		}
	}
	return msg
}
