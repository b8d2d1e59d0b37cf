#include "learning/general_prompts.h"

namespace hs {

const std::vector<std::string>& builtin_replay_prompts() {
  static const std::vector<std::string> prompts = {
      "What is the capital of Portugal?",
      "Write a limerick about a sleepy dog.",
      "What is 14 plus 29?",
      "Hey there! What's new with you?",
      "Who wrote the novel Don Quixote?",
      "List three kinds of trees.",
      "What is 9 times 12?",
      "I'm planning a trip to the mountains. What should I pack?",
      "How many bones are in the adult human body?",
      "Translate 'good night' into Italian.",
      "What is 72 divided by 8?",
      "Any tips for keeping houseplants alive?",
      "Which planet is closest to the Sun?",
      "What is the opposite of the word \"ancient\"?",
      "What is 91 minus 46?",
      "I burned my toast this morning, haha.",
      "Which ocean lies between Africa and Australia?",
      "Describe a sunrise in two sentences.",
      "What is 3 cubed?",
      "What's a good board game for a family night?",
      "Which element has the chemical symbol Fe?",
      "Name three sports played with a ball.",
      "What is 17 plus 26?",
      "I started learning guitar. Any encouragement?",
      "Who painted the ceiling of the Sistine Chapel?",
      "Write a short riddle about a clock.",
      "What is 8 times 15?",
      "How can I stay focused while studying?",
      "What do caterpillars turn into?",
      "Turn this into a question: The train leaves at noon.",
      "What is 250 minus 99?",
      "I just moved into a new apartment. How do I make it cozy?",
  };
  return prompts;
}

const std::vector<std::string>& builtin_canary_prompts() {
  static const std::vector<std::string> prompts = {
      "What is the capital of Kenya?",
      "Write a short sentence about snow.",
      "What is 13 times 4?",
      "Hi, I'm new here. How does this work?",
      "Who wrote The Odyssey?",
      "Name three birds.",
      "What is 120 divided by 10?",
      "Can you recommend a good snack for a long drive?",
      "Which planet has the most famous rings?",
      "Translate 'please' into Spanish.",
      "What is 33 plus 58?",
      "I finished my first marathon today!",
      "Which gas do humans need to breathe?",
      "Give me an adjective that describes summer.",
      "What is 75 minus 28?",
      "What's something nice I can do for my neighbor?",
  };
  return prompts;
}

}  // namespace hs
