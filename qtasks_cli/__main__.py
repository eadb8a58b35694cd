from qtasks_cli.cli import main

main()
