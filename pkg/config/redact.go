package config

import (
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

// redact returns raw with its password hidden, whether or not it parses as
// a URL: the text after the first ":" of the user information (between
// "://" and the last "@" before the path), and the value of any query
// parameter whose name says it holds a secret (password, pass, pwd, secret,
// token, auth).
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		if user, _, hasPassword := strings.Cut(rest[:at], ":"); hasPassword {
			rest = user + ":" + hiddenPassword + rest[at:]
		}
	}
	base, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return scheme + "://" + rest
	}
	query, fragment, hasFragment := strings.Cut(query, "#")
	params := strings.Split(query, "&")
	for i, p := range params {
		name, _, hasValue := strings.Cut(p, "=")
		lower := strings.ToLower(name)
		for _, word := range []string{"pass", "pwd", "secret", "token", "auth"} {
			if hasValue && strings.Contains(lower, word) {
				params[i] = name + "=" + hiddenPassword
			}
		}
	}
	out := scheme + "://" + base + "?" + strings.Join(params, "&")
	if hasFragment {
		out += "#" + fragment
	}
	return out
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

// scrub hides, in a message from elsewhere (a URL parser's error), every
// form in which a URL of the layers or a secret may appear in it: the raw
// URL, quoted or not, its password, the secret values.
func (l layers) scrub(msg string) string {
	for key, v := range l {
		switch {
		case v.Value == "":
		case isURLKey(key) && redact(v.Value) != v.Value:
			quoted := strconv.Quote(v.Value)
			msg = strings.ReplaceAll(msg, v.Value, redact(v.Value))
			msg = strings.ReplaceAll(msg, quoted[1:len(quoted)-1], redact(v.Value))
		case secret[key]:
			msg = strings.ReplaceAll(msg, v.Value, "(hidden)")
		}
	}
	return msg
}
