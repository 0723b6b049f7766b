from mxn.cli import main

main()
