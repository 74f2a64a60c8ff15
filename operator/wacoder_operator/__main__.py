from wacoder_operator.main import main

main()
