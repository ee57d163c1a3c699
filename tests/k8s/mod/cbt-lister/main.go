// cbt-lister: a backup tool's view of changed block tracking, for the
// end-to-end test. It lists, through the snapshot-metadata sidecar, the
// allocated ranges of a VolumeSnapshot or the ranges changed since a base
// VolumeSnapshot of the same PVC. The upstream iterator package does the
// work a backup tool must: it finds the driver's SnapshotMetadataService,
// asks for a token of the service account scoped to that service's
// audience, and reads the sidecar's gRPC stream over TLS with the
// service's CA.
//
// Output: "capacity BYTES TYPE" (TYPE FIXED_LENGTH or VARIABLE_LENGTH),
// then one "OFFSET LENGTH" line per range, in the order streamed.
//
//	cbt-lister --kubeconfig FILE --namespace NS --snapshot NAME [--base NAME]
//	           [--service-account NS/NAME] [--max-results N] [--timeout D]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/iterator"
	"k8s.io/client-go/tools/clientcmd"
)

// printer writes each streamed message's ranges as they come, so a long
// listing is never held whole.
type printer struct {
	out      io.Writer
	capacity int64
	headed   bool
}

func (p *printer) SnapshotMetadataIteratorRecord(_ int, m iterator.IteratorMetadata) error {
	if !p.headed {
		p.headed = true
		p.capacity = m.VolumeCapacityBytes
		if _, err := fmt.Fprintf(p.out, "capacity %d %s\n", m.VolumeCapacityBytes, m.BlockMetadataType); err != nil {
			return err
		}
	} else if m.VolumeCapacityBytes != p.capacity {
		return fmt.Errorf("the capacity changed within the stream: %d, then %d", p.capacity, m.VolumeCapacityBytes)
	}
	for _, b := range m.BlockMetadata {
		if _, err := fmt.Fprintf(p.out, "%d %d\n", b.ByteOffset, b.SizeBytes); err != nil {
			return err
		}
	}
	return nil
}

func (p *printer) SnapshotMetadataIteratorDone(int) error {
	if !p.headed {
		return errors.New("the stream ended without a message (no capacity)")
	}
	return nil
}

func run() error {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the backup tool's identity")
	namespace := flag.String("namespace", "default", "namespace of the VolumeSnapshots")
	snapshot := flag.String("snapshot", "", "the VolumeSnapshot to list")
	base := flag.String("base", "", "a VolumeSnapshot of the same PVC taken earlier: list the ranges changed since")
	sa := flag.String("service-account", "", "NAMESPACE/NAME of the service account whose token the sidecar checks (default: the kubeconfig's own)")
	maxResults := flag.Int("max-results", 0, "ranges per message (0: the driver's choice)")
	timeout := flag.Duration("timeout", 5*time.Minute, "for the whole listing")
	flag.Parse()
	if *snapshot == "" || flag.NArg() > 0 {
		return errors.New("usage: cbt-lister --snapshot NAME [--base NAME] [--namespace NS] [--kubeconfig FILE] [--service-account NS/NAME]")
	}
	var saNamespace, saName string
	if *sa != "" {
		var ok bool
		if saNamespace, saName, ok = strings.Cut(*sa, "/"); !ok || saNamespace == "" || saName == "" {
			return fmt.Errorf("--service-account %q: want NAMESPACE/NAME", *sa)
		}
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %q: %w", *kubeconfig, err)
	}
	clients, err := iterator.BuildClients(config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return iterator.GetSnapshotMetadata(ctx, iterator.Args{
		Clients:          clients,
		Emitter:          &printer{out: os.Stdout},
		Namespace:        *namespace,
		SnapshotName:     *snapshot,
		PrevSnapshotName: *base,
		MaxResults:       int32(*maxResults),
		SANamespace:      saNamespace,
		SAName:           saName,
	})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "cbt-lister: %v\n", err)
		os.Exit(1)
	}
}
