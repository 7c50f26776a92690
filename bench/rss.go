package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// rssSampler samples this process's resident memory every 100 ms. In the
// sections that run every part in this process, that is the system's
// memory; the processes section reads each part's own.
type rssSampler struct{ max atomic.Int64 }

func startRSSSampler() *rssSampler {
	s := &rssSampler{}
	go func() {
		for range time.Tick(100 * time.Millisecond) {
			if v := readRSS(); v > s.max.Load() {
				s.max.Store(v)
			}
		}
	}()
	return s
}

func (s *rssSampler) current() int64 { return readRSS() }

// peak returns the highest value seen so far and starts a new window.
func (s *rssSampler) peak() int64 {
	v := max(s.max.Load(), readRSS())
	s.max.Store(0)
	return v
}

// readRSS returns this process's VmRSS in bytes (Linux), or 0.
func readRSS() int64 { return readRSSOf("self", "VmRSS:") }

// readRSSOf returns a memory field of /proc/<pid>/status in bytes (Linux),
// or 0: VmRSS, or RssAnon for the part not backed by a file (the binary's
// pages are backed by it, and shared by every process running it).
func readRSSOf(pid, field string) int64 {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
