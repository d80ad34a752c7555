from wsrt.cli import main

main()
