// A Go service's side of the interoperability test: it writes and reads instances exactly
// as the Go registry component does (json.Marshal / json.Unmarshal of its ServiceInstance
// at <namespace>/<name>/<id>, on a lease), talking to etcd through its JSON gateway so
// that only Go's standard library is needed.
//
//	go run interop.go register <http://host:port> <namespace>
//	go run interop.go list <http://host:port> <namespace> <service>
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

// ServiceInstance is the Go registry's model, field for field.
type ServiceInstance struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []string          `json:"endpoints"`
}

func call(base, path string, request, response interface{}) {
	body, err := json.Marshal(request)
	check(err)
	reply, err := http.Post(base+path, "application/json", bytes.NewReader(body))
	check(err)
	defer reply.Body.Close()
	if reply.StatusCode != http.StatusOK {
		panic(fmt.Sprintf("%s: HTTP %d", path, reply.StatusCode))
	}
	check(json.NewDecoder(reply.Body).Decode(response))
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func main() {
	command, base, namespace := os.Args[1], os.Args[2], os.Args[3]
	switch command {
	case "register":
		instance := ServiceInstance{
			ID:        "go-order-1",
			Name:      "order-service",
			Version:   "2.0.0",
			Metadata:  map[string]string{"zone": "zone-b", "weight": "100", "note": "<go & grpc> café"},
			Endpoints: []string{"grpc://127.0.0.1:8080"},
		}
		value, err := json.Marshal(instance)
		check(err)
		var lease struct{ ID string }
		call(base, "/v3/lease/grant", map[string]interface{}{"TTL": 30}, &lease)
		key := namespace + "/" + instance.Name + "/" + instance.ID
		var put map[string]interface{}
		call(base, "/v3/kv/put", map[string]interface{}{"key": b64(key), "value": b64(string(value)), "lease": lease.ID}, &put)
		fmt.Println(string(value))
	case "list":
		prefix := namespace + "/" + os.Args[4] + "/"
		end := []byte(prefix)
		end[len(end)-1]++
		var got struct {
			Kvs []struct{ Value string }
		}
		call(base, "/v3/kv/range", map[string]string{"key": b64(prefix), "range_end": b64(string(end))}, &got)
		for _, kv := range got.Kvs {
			raw, err := base64.StdEncoding.DecodeString(kv.Value)
			check(err)
			var instance ServiceInstance
			check(json.Unmarshal(raw, &instance))
			again, err := json.Marshal(instance)
			check(err)
			fmt.Println(string(again))
		}
	default:
		panic("unknown command " + command)
	}
}
