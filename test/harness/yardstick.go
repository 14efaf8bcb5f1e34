package harness

// YardstickSummary is the yardstick handler's {"event":"summary",...} line.
type YardstickSummary struct {
	Event          string  `json:"event"`
	Pages          uint64  `json:"pages"`
	Faults         uint64  `json:"faults"`
	FaultsRepeated uint64  `json:"faults_repeated"`
	TotalS         float64 `json:"total_s"`
}

// StartYardstick starts the yardstick (the simplest synchronous remote
// handler): its server on the image file, then its handler connected to it
// and listening for the VMM on socket, and waits for both ready lines. The
// Procs are returned even on error (nil only if they could not start), so
// that the caller can show their stderr and stop them.
func StartYardstick(b Bins, image, socket string, o StartOptions) (srv, handler *Proc, err error) {
	srv, err = Start("yardstick-server", b.Yardstick, []string{"serve", "--image", image}, o)
	if err != nil {
		return nil, nil, err
	}
	var ready struct {
		Addr string `json:"addr"`
	}
	if err := srv.WaitEvent("ready", ReadyTimeout, &ready); err != nil {
		return srv, nil, err
	}
	handler, err = Start("yardstick", b.Yardstick, []string{"handle", "--server", ready.Addr, "--uffd-socket", socket}, o)
	if err != nil {
		return srv, nil, err
	}
	return srv, handler, handler.WaitEvent("ready", ReadyTimeout, nil)
}
