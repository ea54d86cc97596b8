module ridpool.example/starter

go 1.19

require github.com/gomodule/redigo v1.8.3

// Debian's golang-github-gomodule-redigo-dev: builds with no module proxy. With one, drop this line and run
// `go mod tidy`.
replace github.com/gomodule/redigo => /usr/share/gocode/src/github.com/gomodule/redigo
