// Package client is the destination side of the postcopy page-server
// protocol (proto/postcopy/v1; the messages, framing and errors both ends
// share are in pkg/wire): Dial connects a Client to a pkg/server Server,
// Open (or OpenDemand) opens a Session over the regions the destination
// needs, and its Demand and Bulk Lanes send Requests and receive Responses.
//
// A Client holds two gRPC connections, demand and bulk, on separate TCP
// connections, so that a remote fault never queues behind bulk bytes. Where
// the server offers them, lanes are socket lanes (socketlane.go): the same
// messages without gRPC's hand-offs, over TLS too (verified as the gRPC
// connections verify the server); Lane.WaitInThread lets a real-time
// thread wait for demand answers itself. Errors are converted once, at this
// edge, into *wire.Error values (wire.FromStatus).
package client
