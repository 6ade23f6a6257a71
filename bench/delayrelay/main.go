// delayrelay: a TCP relay on loopback that holds every byte for a fixed time in each
// direction, the round trip of a distant store added in user space (the benchmarks' kernel
// has no sch_netem). Bandwidth is not limited; only latency is added. Written in Go so that
// the relay's own CPU stays small beside the client it measures (a Python relay used
// 17-22 CPU seconds per 8 GiB backup and restore on the same two cores).
//
//	delayrelay -target 127.0.0.1:PORT -half-rtt 10ms
//
// prints "port N" on stdout once it listens, then relays until killed.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"time"
)

type piece struct {
	due  time.Time
	data []byte // nil: the sender closed its side
}

func main() {
	target := flag.String("target", "", "host:port to relay to")
	half := flag.Duration("half-rtt", 10*time.Millisecond, "delay in each direction")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "delayrelay: -target is required")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(client.(*net.TCPConn), *target, *half)
	}
}

func serve(client *net.TCPConn, target string, half time.Duration) {
	c, err := net.Dial("tcp", target)
	if err != nil {
		client.Close()
		return
	}
	upstream := c.(*net.TCPConn)
	for _, s := range []*net.TCPConn{client, upstream} {
		s.SetNoDelay(true) // as the client (urllib3) does: no delayed-ACK stalls netem would not add
	}
	done := make(chan struct{}, 2)
	go pipe(client, upstream, half, done)
	go pipe(upstream, client, half, done)
	<-done
	<-done
	client.Close()
	upstream.Close()
}

// pipe copies from src to dst, each read held until half has passed since it arrived.
func pipe(src, dst *net.TCPConn, half time.Duration, done chan<- struct{}) {
	q := make(chan piece, 4096)
	go func() {
		for {
			buf := make([]byte, 256<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- piece{time.Now().Add(half), buf[:n]}
			}
			if err != nil {
				q <- piece{time.Now().Add(half), nil}
				return
			}
		}
	}()
	for p := range q {
		if d := time.Until(p.due); d > 0 {
			time.Sleep(d)
		}
		if p.data == nil {
			dst.CloseWrite()
			break
		}
		if _, err := dst.Write(p.data); err != nil {
			src.CloseRead() // the reader's next Read fails and it ends
			break
		}
	}
	done <- struct{}{}
}
