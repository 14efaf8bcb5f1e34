// Package deps pins the modules the project is built on while the packages
// that use them are written; it is removed once they import them directly.
package deps

import (
	_ "github.com/hashicorp/go-hclog"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc"
	_ "google.golang.org/grpc/health"
	_ "google.golang.org/protobuf/proto"
)
