// Command xds-testserver is the xDS management server of the pod-in-a-box
// tests: go-control-plane's ADS server over its snapshot cache, plus a small
// JSON interface on loopback through which a test sets snapshots and reads
// what the server has seen.
//
// Usage:
//
//	xds-testserver -xds HOST:PORT [-control 127.0.0.1:0]
//
// Once both sockets listen it prints one JSON line on stdout,
// {"xds": "HOST:PORT", "control": "127.0.0.1:PORT"}, and serves until SIGTERM
// or SIGINT, which end it at once, streams and all (a control plane that
// goes away, not one that drains).
//
// Control interface (HTTP/1.1, JSON, bodies up to 1 MiB):
//
//	PUT /snapshot  {"node": ID, "version": V, "listeners": [...], "routes": [...],
//	                "clusters": [...], "endpoints": [...]}
//	    Each resource is the proto3 JSON form of its Envoy v3 message
//	    (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment), as in
//	    an Envoy config file. The snapshot must be consistent (every route
//	    and EDS cluster referenced, nothing unreferenced), and replaces the
//	    node's previous one. 200 {"version": V}; 400 {"error": "..."}.
//	GET /state
//	    {"nodes": {ID: {"cluster", "user_agent", "streams_open",
//	    "streams_total", "types": {TYPE_URL: {"sent", "acked", "acks",
//	    "nacks": [{"version", "error"}]}}}}, "snapshots": {ID: V}}
//	    "sent" is the version last sent, "acked" the version last ACKed
//	    (a request carrying the response nonce and no error_detail), "acks"
//	    their count, "nacks" the last NACKs (with Envoy's error message). A
//	    NACKed version is not sent again; the next snapshot is.
//
// It is a test fixture: plaintext, no authentication, loopback control port.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"

	// Registered so protojson can resolve the typed_config of the filters
	// and protocol options a test's resources use.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

const (
	maxBody  = 1 << 20 // one snapshot of a test's size is a few KiB
	maxNodes = 64      // distinct node ids remembered; more streams are refused
	maxNacks = 16      // NACKs kept per node and type (the most recent)
)

type nack struct {
	Version string `json:"version"`
	Error   string `json:"error"`
}

type typeState struct {
	Sent  string `json:"sent"`
	Acked string `json:"acked"`
	Acks  int    `json:"acks"`
	Nacks []nack `json:"nacks"`
}

type nodeState struct {
	Cluster      string                `json:"cluster"`
	UserAgent    string                `json:"user_agent"`
	StreamsOpen  int                   `json:"streams_open"`
	StreamsTotal int                   `json:"streams_total"`
	Types        map[string]*typeState `json:"types"`
}

// view is what the server has seen, fed by go-control-plane's callbacks.
type view struct {
	mu      sync.Mutex
	nodes   map[string]*nodeState
	streams map[int64]string // stream id -> node id, once the node is known
}

func newView() *view {
	return &view{nodes: map[string]*nodeState{}, streams: map[int64]string{}}
}

// node returns the entry for id, creating it; nil when the table is full.
func (v *view) node(id string) *nodeState {
	n, ok := v.nodes[id]
	if !ok {
		if len(v.nodes) >= maxNodes {
			return nil
		}
		n = &nodeState{Types: map[string]*typeState{}}
		v.nodes[id] = n
	}
	return n
}

func (n *nodeState) typ(url string) *typeState {
	t, ok := n.Types[url]
	if !ok {
		t = &typeState{Nacks: []nack{}}
		n.Types[url] = t
	}
	return t
}

// onRequest records the stream's node (the server fills in the first
// request's node on later ones) and whether the request ACKs or NACKs.
func (v *view) onRequest(stream int64, req *discovery.DiscoveryRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	id := req.GetNode().GetId()
	n := v.node(id)
	if n == nil {
		return fmt.Errorf("more than %d distinct node ids", maxNodes)
	}
	if _, known := v.streams[stream]; !known {
		v.streams[stream] = id
		n.Cluster = req.GetNode().GetCluster()
		n.UserAgent = req.GetNode().GetUserAgentName()
		n.StreamsOpen++
		n.StreamsTotal++
	}
	if req.GetResponseNonce() == "" {
		return nil // a subscription, not an answer to a response
	}
	t := n.typ(req.GetTypeUrl())
	if detail := req.GetErrorDetail(); detail != nil {
		// A NACK carries the version still in use; the rejected one is the
		// version last sent.
		t.Nacks = append(t.Nacks, nack{Version: t.Sent, Error: detail.GetMessage()})
		if len(t.Nacks) > maxNacks {
			t.Nacks = t.Nacks[len(t.Nacks)-maxNacks:]
		}
		// The snapshot cache sees an older version than its own and re-sends
		// the rejected one at once, which Envoy rejects again: a busy loop
		// (about 570 NACKs a second in pod-in-a-box). Telling the cache the
		// client is at the rejected version makes it wait for the next
		// snapshot instead, as a control plane should. The server hands this
		// same request to the cache after the callback.
		req.VersionInfo = t.Sent
		return nil
	}
	t.Acked = req.GetVersionInfo()
	t.Acks++
	return nil
}

func (v *view) onResponse(stream int64, resp *discovery.DiscoveryResponse) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if id, ok := v.streams[stream]; ok {
		v.nodes[id].typ(resp.GetTypeUrl()).Sent = resp.GetVersionInfo()
	}
}

func (v *view) onClosed(stream int64, _ *core.Node) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if id, ok := v.streams[stream]; ok {
		v.nodes[id].StreamsOpen--
		delete(v.streams, stream)
	}
}

// snapshotBody is the PUT /snapshot document; resources stay raw until
// protojson decodes them into their Envoy types.
type snapshotBody struct {
	Node      string            `json:"node"`
	Version   string            `json:"version"`
	Listeners []json.RawMessage `json:"listeners"`
	Routes    []json.RawMessage `json:"routes"`
	Clusters  []json.RawMessage `json:"clusters"`
	Endpoints []json.RawMessage `json:"endpoints"`
}

func decodeAll(kind string, raw []json.RawMessage, fresh func() proto.Message) ([]types.Resource, error) {
	out := make([]types.Resource, 0, len(raw))
	for i, item := range raw {
		msg := fresh()
		if err := protojson.Unmarshal(item, msg); err != nil {
			return nil, fmt.Errorf("%s[%d]: %v", kind, i, err)
		}
		out = append(out, msg)
	}
	return out, nil
}

func parseSnapshot(body []byte) (string, *cachev3.Snapshot, error) {
	var doc snapshotBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return "", nil, fmt.Errorf("snapshot: %v", err)
	}
	if doc.Node == "" || doc.Version == "" {
		return "", nil, errors.New(`snapshot: "node" and "version" are required`)
	}
	kinds := []struct {
		name  string
		url   resource.Type
		raw   []json.RawMessage
		fresh func() proto.Message
	}{
		{"listeners", resource.ListenerType, doc.Listeners, func() proto.Message { return &listener.Listener{} }},
		{"routes", resource.RouteType, doc.Routes, func() proto.Message { return &route.RouteConfiguration{} }},
		{"clusters", resource.ClusterType, doc.Clusters, func() proto.Message { return &cluster.Cluster{} }},
		{"endpoints", resource.EndpointType, doc.Endpoints, func() proto.Message { return &endpoint.ClusterLoadAssignment{} }},
	}
	resources := map[resource.Type][]types.Resource{}
	for _, k := range kinds {
		items, err := decodeAll(k.name, k.raw, k.fresh)
		if err != nil {
			return "", nil, err
		}
		resources[k.url] = items
	}
	snap, err := cachev3.NewSnapshot(doc.Version, resources)
	if err != nil {
		return "", nil, err
	}
	if err := snap.Consistent(); err != nil {
		return "", nil, fmt.Errorf("snapshot not consistent: %v", err)
	}
	return doc.Node, snap, nil
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func controlHandler(snapshots cachev3.SnapshotCache, seen *view) http.Handler {
	var mu sync.Mutex
	versions := map[string]string{}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /snapshot", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": err.Error()})
			return
		}
		node, snap, err := parseSnapshot(body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if len(versions) >= maxNodes && versions[node] == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "too many nodes"})
			return
		}
		if err := snapshots.SetSnapshot(r.Context(), node, snap); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		versions[node] = snap.GetVersion(resource.ListenerType)
		log.Printf("snapshot %q set for node %q", versions[node], node)
		writeJSON(w, http.StatusOK, map[string]string{"version": versions[node]})
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		seen.mu.Lock()
		body, err := json.Marshal(map[string]any{"nodes": seen.nodes, "snapshots": versions})
		seen.mu.Unlock()
		mu.Unlock()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	return mux
}

func main() {
	xdsAddr := flag.String("xds", "", "address for the ADS gRPC server (host:port), required")
	controlAddr := flag.String("control", "127.0.0.1:0", "address for the JSON control interface")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("xds-testserver: ")
	if *xdsAddr == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: xds-testserver -xds HOST:PORT [-control HOST:PORT]")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	seen := newView()
	snapshots := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	callbacks := serverv3.CallbackFuncs{
		StreamRequestFunc: seen.onRequest,
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			seen.onResponse(id, resp)
		},
		StreamClosedFunc: seen.onClosed,
	}
	xds := serverv3.NewServer(ctx, snapshots, callbacks)
	// grpc-go's default keepalive enforcement is kept on purpose: it is what
	// most control planes run, so the proxy's bootstrap must live with it.
	grpcServer := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)

	xdsListener, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		log.Fatalf("listen %s: %v", *xdsAddr, err)
	}
	controlListener, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("listen %s: %v", *controlAddr, err)
	}
	control := &http.Server{
		Handler:           controlHandler(snapshots, seen),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	go func() {
		if err := grpcServer.Serve(xdsListener); err != nil {
			log.Fatalf("ads: %v", err)
		}
	}()
	go func() {
		if err := control.Serve(controlListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatalf("control: %v", err)
		}
	}()
	ready, _ := json.Marshal(map[string]string{
		"xds":     xdsListener.Addr().String(),
		"control": controlListener.Addr().String(),
	})
	fmt.Println(string(ready))

	<-ctx.Done()
	// Stop, not GracefulStop: ADS streams never end by themselves.
	grpcServer.Stop()
	_ = control.Close()
}
