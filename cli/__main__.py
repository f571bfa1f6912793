from devart.cli.main import main

main()
