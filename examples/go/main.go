// A recording starter in Go: pop a fresh resourceId from a ridpool pool, call Agora's `start` with it, and
// report how it went. The FCALLs and the wait loop are the README's ("Any language: FCALL ridpool_pop").
//
//	go build -o starter . && ./starter POOL [CNAME]   (CNAME for a pool of named channels; none for a template pool)
//
// Environment: RIDPOOL_REDIS_URL (redis://:PASSWORD@HOST:6379/0), RIDPOOL_PREFIX (the daemon's key_prefix),
// AGORA_BASE_URL, AGORA_CUSTOMER_ID, AGORA_CUSTOMER_SECRET, AGORA_MODE (individual, mix or web) and
// AGORA_CLIENT_REQUEST (start's clientRequest as JSON: Agora needs your token, recordingConfig, storageConfig).
// Prints one JSON line; exits 0 when started, 3 when the pool had nothing fresh enough, 1 otherwise.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

const (
	minTTL = 10 * time.Second // an ID with less life left is of no use: start must reach Agora before it expires
	wait   = 2 * time.Second
)

// Keys of one pool, as pool/keys.py names them: a named channel's queue has `%` and `:` percent-encoded.
type Keys struct{ Meta, Stats, Starts, Ann, Changes, Queue, Ready string }

func poolKeys(prefix, pool, cname string) Keys {
	tag := fmt.Sprintf("%s:{%s}", prefix, pool)
	queue := tag + ":q"
	if cname != "" {
		queue += ":" + strings.NewReplacer("%", "%25", ":", "%3A").Replace(cname)
	}
	return Keys{tag + ":meta", tag + ":stats", tag + ":starts", tag + ":ann", tag + ":changes", queue, queue + ":ready"}
}

// Entry is what ridpool_pop replies, as field/value pairs.
type Entry struct {
	ResourceID, Appid, Cname, UID string
	SentAt                        int64
}

// pop runs FCALL ridpool_pop; between tries it blocks on the ready list (a token wakes it, it reserves
// nothing). Only the last try counts a miss. nil: nothing fresh enough came in time.
func pop(conn redis.Conn, keys Keys, cname string, minTTL, wait time.Duration) (*Entry, error) {
	deadline := time.Now().Add(wait)
	for {
		last := !time.Now().Before(deadline)
		miss := map[bool]string{true: "1", false: "0"}[last]
		reply, err := redis.Values(conn.Do("FCALL", "ridpool_pop", 5, keys.Meta, keys.Stats, keys.Queue,
			keys.Ann, keys.Changes, cname, minTTL.Milliseconds(), miss))
		if err != nil && err != redis.ErrNil {
			return nil, err
		}
		if reply != nil {
			return parseEntry(reply)
		}
		if last {
			return nil, nil
		}
		if left := time.Until(deadline); left > 0 {
			block := time.Second // bounded, and never 0, which would block for ever
			if left < block {
				block = left
			}
			if block < 10*time.Millisecond {
				block = 10 * time.Millisecond
			}
			if _, err := conn.Do("BLPOP", keys.Ready, fmt.Sprintf("%.3f", block.Seconds())); err != nil &&
				err != redis.ErrNil {
				return nil, err
			}
		}
	}
}

func parseEntry(reply []interface{}) (*Entry, error) {
	e := &Entry{}
	for i := 0; i+1 < len(reply); i += 2 {
		field, _ := redis.String(reply[i], nil)
		switch field {
		case "resourceId":
			e.ResourceID, _ = redis.String(reply[i+1], nil)
		case "appid":
			e.Appid, _ = redis.String(reply[i+1], nil)
		case "cname":
			e.Cname, _ = redis.String(reply[i+1], nil)
		case "uid":
			e.UID, _ = redis.String(reply[i+1], nil)
		case "sentAt":
			e.SentAt, _ = redis.Int64(reply[i+1], nil)
		}
	}
	if e.ResourceID == "" || e.SentAt == 0 {
		return nil, fmt.Errorf("unexpected pop reply %v", reply)
	}
	return e, nil
}

// Started is how Agora's `start` went: Code is Agora's error code (else the HTTP status) on failure.
type Started struct {
	OK   bool   `json:"ok"`
	Code string `json:"code"`
	Sid  string `json:"sid,omitempty"`
}

// start calls Agora's Cloud Recording `start` with the popped ID.
func start(e *Entry) (Started, error) {
	clientRequest := json.RawMessage(getenv("AGORA_CLIENT_REQUEST", "{}"))
	body, err := json.Marshal(map[string]interface{}{"cname": e.Cname, "uid": e.UID, "clientRequest": clientRequest})
	if err != nil {
		return Started{}, err
	}
	path := fmt.Sprintf("/v1/apps/%s/cloud_recording/resourceid/%s/mode/%s/start",
		e.Appid, url.PathEscape(e.ResourceID), getenv("AGORA_MODE", "mix"))
	req, err := http.NewRequest("POST", getenv("AGORA_BASE_URL", "https://api.sd-rtn.com")+path, bytes.NewReader(body))
	if err != nil {
		return Started{}, err
	}
	req.SetBasicAuth(os.Getenv("AGORA_CUSTOMER_ID"), os.Getenv("AGORA_CUSTOMER_SECRET"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return Started{}, err
	}
	defer resp.Body.Close()
	var answer struct {
		Sid  string          `json:"sid"`
		Code json.RawMessage `json:"code"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	if resp.StatusCode == http.StatusOK && answer.Sid != "" {
		return Started{OK: true, Sid: answer.Sid}, nil
	}
	code := strings.Trim(string(answer.Code), `"`)
	if code == "" {
		code = strconv.Itoa(resp.StatusCode)
	}
	return Started{Code: code}, nil
}

// report runs FCALL ridpool_report: counted by the ID's age, so failure rates by age show in `ridpool status`.
func report(conn redis.Conn, keys Keys, e *Entry, s Started) (int64, error) {
	outcome := map[bool]string{true: "ok", false: "failed"}[s.OK]
	return redis.Int64(conn.Do("FCALL", "ridpool_report", 2, keys.Starts, keys.Meta, e.SentAt, outcome, s.Code))
}

func getenv(name, fallback string) string {
	if value, ok := os.LookupEnv(name); ok {
		return value
	}
	return fallback
}

func run(pool, cname string) (int, error) {
	keys := poolKeys(getenv("RIDPOOL_PREFIX", "ridpool"), pool, cname)
	conn, err := redis.DialURL(getenv("RIDPOOL_REDIS_URL", "redis://127.0.0.1:6379/0"),
		redis.DialConnectTimeout(2*time.Second), redis.DialReadTimeout(5*time.Second))
	if err != nil {
		return 1, err
	}
	defer conn.Close()
	entry, err := pop(conn, keys, cname, minTTL, wait)
	if err != nil {
		return 1, err
	}
	if entry == nil {
		fmt.Fprintf(os.Stderr, "pool %s: nothing fresh enough within %s\n", pool, wait)
		return 3, nil
	}
	started, err := start(entry)
	if err != nil {
		return 1, err
	}
	age, err := report(conn, keys, entry, started)
	if err != nil {
		return 1, err
	}
	out, _ := json.Marshal(struct {
		ResourceID string `json:"resourceId"`
		Cname      string `json:"cname"`
		UID        string `json:"uid"`
		Started
		AgeMs int64 `json:"ageMs"`
	}{entry.ResourceID, entry.Cname, entry.UID, started, age})
	fmt.Println(string(out))
	if !started.OK {
		return 1, nil
	}
	return 0, nil
}

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: starter POOL [CNAME]")
		os.Exit(2)
	}
	cname := ""
	if len(os.Args) == 3 {
		cname = os.Args[2]
	}
	code, err := run(os.Args[1], cname)
	if err != nil {
		fmt.Fprintf(os.Stderr, "starter: %v\n", err)
	}
	os.Exit(code)
}
