"""Tools that drive the server from outside: never imported by the server itself.

Clients (`client`, `whipclient`), machine-checkable media (`testmedia`), link emulation
(`linkemu`), synthetic recordings (`synthetic`) and the load tester (`loadtest`, the
``conference loadtest`` command).  Tests, benchmarks and operators use them; the
server's process loads none of them (tests/test_import_graph.py checks it).
"""
