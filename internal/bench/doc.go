// Package bench holds the parts of the migbench end-to-end migration
// benchmark that are not process orchestration: the workload that runs on
// the migrated memory (content fill, access patterns, its small movable
// state), the throughput timeline and the figures computed from it (work
// lost, recovery), the workload's stall histogram,
// per-page checksums, the TCP baselines, the shaped network link between two
// network namespaces, and the report (table, JSON, CSV, SVG plot).
//
// Everything here is a library: errors are returned, nothing logs or exits.
// cmd/migbench runs the pieces in separate processes.
package bench
