from metaexp.cli import main

main()
