"""Developer tools: the process supervisor behind `make run`, the terminal chat behind
`make chat`, and the local Twilio Messages API both of them (and the tests) talk to."""
