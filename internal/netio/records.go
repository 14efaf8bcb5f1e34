package netio

import "io"

// MaxRecordPlaintext is the most bytes one TLS record carries (2^14, RFC
// 8446 section 5.1); crypto/tls cuts every Write into records of at most
// this much — of less while it ramps up, unless the configuration sets
// DynamicRecordSizingDisabled, as both ends of a TLS socket lane do.
const MaxRecordPlaintext = 16 << 10

// WriteRecords writes every byte of bufs to w, a TLS connection, so that
// each record is full but the last: crypto/tls makes one record of each
// Write (or of each MaxRecordPlaintext of it), and sends each record with
// one write system call. A frame's small pieces (its length, the message's
// header) are gathered into scratch with the first bytes of the data that
// follows; whole records' worth of a large buffer go to w as they are,
// without a copy; what is left joins the next record. A demand answer (a
// 4 KiB page and its header) is then one record and one system call, and a
// 1 MiB bulk run 64 full records, copying at most two records' worth.
// scratch is kept across calls.
func WriteRecords(w io.Writer, bufs [][]byte, scratch *[]byte) error {
	s := (*scratch)[:0]
	if cap(s) < MaxRecordPlaintext {
		s = make([]byte, 0, MaxRecordPlaintext)
	}
	defer func() { *scratch = s[:0] }()
	for _, b := range bufs {
		if len(s) > 0 || len(b) < MaxRecordPlaintext {
			k := min(len(b), MaxRecordPlaintext-len(s))
			s = append(s, b[:k]...)
			b = b[k:]
			if len(s) < MaxRecordPlaintext {
				continue // b is used up
			}
			if _, err := w.Write(s); err != nil {
				return err
			}
			s = s[:0]
		}
		if whole := len(b) - len(b)%MaxRecordPlaintext; whole > 0 {
			if _, err := w.Write(b[:whole]); err != nil {
				return err
			}
			b = b[whole:]
		}
		s = append(s, b...)
	}
	if len(s) > 0 {
		if _, err := w.Write(s); err != nil {
			return err
		}
	}
	return nil
}
