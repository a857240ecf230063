// Command etcd is etcd's own entry point (etcd's main.go), built from the
// etcd server module at the version this Kubernetes release pins in its
// build/dependencies.yaml, so the API server runs on the etcd it ships with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
