package maglev_test

import (
	"fmt"

	"github.com/halb-lb/halb/maglev"
)

func Example() {
	backends := []maglev.Backend{
		{Key: "198.51.100.11:80", Weight: 1},
		{Key: "198.51.100.12:80", Weight: 1},
		{Key: "198.51.100.13:80", Weight: 2}, // twice the others' flows
		{Key: "198.51.100.14:80", Weight: 0}, // drained: no new flows
	}
	table, err := maglev.Build(backends, 251) // datapath.maglev_table_size, a prime
	if err != nil {
		fmt.Println(err)
		return
	}

	slots := make([]int, len(backends))
	for _, i := range table {
		slots[i]++
	}
	for i, b := range backends {
		fmt.Printf("%s weight %d: %d slots\n", b.Key, b.Weight, slots[i])
	}

	// The data path hashes a flow's 5-tuple and takes the backend in that
	// slot; the peer node, with the same backends, picks the same one.
	var flowHash uint32 = 0x9e3779b9
	fmt.Println("flow goes to", backends[table[flowHash%uint32(len(table))]].Key)

	// Output:
	// 198.51.100.11:80 weight 1: 63 slots
	// 198.51.100.12:80 weight 1: 63 slots
	// 198.51.100.13:80 weight 2: 125 slots
	// 198.51.100.14:80 weight 0: 0 slots
	// flow goes to 198.51.100.11:80
}
