package access

import (
	"net/http"
	"net/url"
	"testing"
)

func TestCredentialsAreOneCallerWhereverTheyAre(t *testing.T) {
	token := "b3BlbmNvZGU6c2VjcmV0" // opencode:secret
	tests := []struct {
		name          string
		authorization []string
		query         string
		want          string
	}{
		{"none", nil, "", ""},
		{"basic header", []string{"Basic " + token}, "", "basic:" + token},
		{"auth_token alone", nil, "auth_token=" + token, "basic:" + token},
		{"another spelling, as sent", []string{"basic " + token}, "", "raw\x00h:basic " + token},
		{"another scheme, as sent", []string{"Bearer x"}, "", "raw\x00h:Bearer x"},
		{"both: all of them, as sent", []string{"Basic " + token}, "auth_token=x", "raw\x00h:Basic " + token + "\x00q:x"},
		{"two tokens", nil, "auth_token=a&auth_token=b", "raw\x00q:a\x00q:b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.authorization {
				h.Add("Authorization", v)
			}
			q, _ := url.ParseQuery(tt.query)
			if got := credentials(h, q); got != tt.want {
				t.Fatalf("credentials = %q, want %q", got, tt.want)
			}
		})
	}
}
